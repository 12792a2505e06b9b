"""Real processes for the tests and the demo: a private redis-server, Celery workers
and beat. Each takes an OS-assigned port or a temporary folder, and stops what it
started."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis


def free_port() -> int:
    """A loopback port that was free a moment ago (redis-server cannot take port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM ``proc``'s process group (it was started with ``start_new_session``), then
    SIGKILL it if ``proc`` has not exited within ``timeout`` seconds; reaps ``proc``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for_output(proc: subprocess.Popen, output: Callable[[], str], marker: str, timeout: float, name: str) -> None:
    """Wait until ``output()`` holds ``marker``; RuntimeError with the output's end if
    ``proc`` exits first, TimeoutError after ``timeout`` seconds."""

    def seen() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{output()[-3000:]}")
        return marker in output()

    wait_until(seen, timeout, interval=0.1, what=f"{name} to start")


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "condition") -> object:
    """Poll ``condition`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A redis-server on a private loopback port, configured as the ledger must be:
    appendonly yes, appendfsync always, maxmemory-policy noeviction."""

    def __init__(self, workdir: str | None = None) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed: run 'make test' (it installs Debian's redis-server) "
                               "or 'apt-get install redis-server'")
        self.dir = workdir or tempfile.mkdtemp(prefix="tms-redis-")
        os.makedirs(self.dir, exist_ok=True)
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction",
                "--save", "", "--daemonize", "no", "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(up, 20, what="redis-server to answer PING")
        client.close()
        return self.url

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class CeleryProcess:
    """``celery -A app worker|beat`` in a subprocess with its own environment."""

    def __init__(self, role: str, env: dict[str, str], args: list[str] = (), log_path: str | Path | None = None,
                 cwd: str | None = None) -> None:
        self.role = role
        self.env = env
        self.args = list(args)
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix=f"tms-{role}-", suffix=".log")[1])
        self.cwd = cwd or str(Path(__file__).resolve().parents[1])
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "app", self.role, *self.args]

    def ready_marker(self) -> str:
        return "ready." if self.role == "worker" else "beat: Starting"

    def start(self) -> CeleryProcess:
        cmd = self.command()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.cwd,
                                     start_new_session=True)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        """A worker is ready when it logs ``ready.``; beat when it logs its start."""
        wait_for_output(self.proc, self.output, self.ready_marker(), timeout, f"celery {self.role}")

    def pool_children(self) -> list[int]:
        """PIDs of a prefork worker's pool processes."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(x) for x in out.stdout.split()]

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, timeout)
        self._log.close()


class ScraperProcess(CeleryProcess):
    """``python -m app <command> ...`` (the pod watcher) in a subprocess, managed like
    the Celery ones; ready once its log shows the ``ready`` text."""

    def __init__(self, command: str, env: dict[str, str], args: list[str] = (), log_path: str | Path | None = None,
                 ready: str = "", cwd: str | None = None) -> None:
        super().__init__(command, env, args, log_path, cwd)
        self.ready = ready

    def command(self) -> list[str]:
        return [sys.executable, "-m", "app", self.role, *self.args]

    def ready_marker(self) -> str:
        return self.ready
