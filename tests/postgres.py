"""A real PostgreSQL server on loopback for tests: its own data folder, stopped by PID.

Uses the Debian package's binaries (``apt-get install postgresql``; `.ci/run` installs it).
PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` user
in a data folder it owns; trust authentication on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from servers import free_port


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    def __init__(self) -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="archon-pg-"))
        self.data = self.dir / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _as_user(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", self._user, "--", *cmd] if self._user else cmd

    def start(self) -> PostgresServer:
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chmod(self.dir, 0o755)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        subprocess.run(self._as_user([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                      "--auth=trust", "--no-sync", "-E", "UTF8"]),
                       check=True, capture_output=True)
        log = (self.dir / "server.log").open("wb")
        self.proc = subprocess.Popen(
            self._as_user([str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                           "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                           "-c", "fsync=off", "-c", "max_connections=100"]),
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_tail()}")
            ready = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"postgres not ready after 60 s: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "server.log").read_text(errors="replace")[-chars:]
        return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)  # "fast" shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
