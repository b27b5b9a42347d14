"""Start, health-check and stop one background service process, tracked by a PID file.

Each service runs in its own session (process group) so that ``stop`` can take
down every child it spawned (Triton's python-backend stubs, for example).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A service could not start or stop; the message names the service, its log and the fix."""


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process and all its descendants, in MiB (Linux /proc)."""
    total_kib = 0
    pids = [pid]
    seen: set[int] = set()
    while pids:
        current = pids.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total_kib += int(line.split()[1])
            with open(f"/proc/{current}/task/{current}/children") as children:
                pids.extend(int(child) for child in children.read().split())
        except OSError:
            continue
    return total_kib / 1024 if seen else None


@dataclass
class ManagedProcess:
    """One service: how to launch it, where it logs, and how to tell it is healthy."""

    name: str
    pid_file: Path
    log_file: Path

    def read_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def start(
        self,
        argv: list[str],
        healthy: Callable[[], bool],
        timeout_s: float,
        fix_hint: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> tuple[int, float]:
        """Launch ``argv`` detached, wait until ``healthy()``; return (pid, seconds taken)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_file, "ab") as log:
            log.write(f"\n--- starting {self.name}: {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=cwd, start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise ServiceError(
                    f"{self.name} exited with code {proc.returncode} during start-up. "
                    f"Log: {self.log_file}\n{tail(self.log_file)}\nFix: {fix_hint}"
                )
            if healthy():
                elapsed = time.monotonic() - started
                logger.info("%s healthy after %.1fs (pid %d)", self.name, elapsed, proc.pid)
                return proc.pid, elapsed
            time.sleep(0.25)
        self.stop()
        raise ServiceError(
            f"{self.name} did not become healthy within {timeout_s:.0f}s. "
            f"Log: {self.log_file}\n{tail(self.log_file)}\nFix: {fix_hint}"
        )

    def stop(self, grace_s: float = 15.0) -> bool:
        """SIGTERM the process group, SIGKILL after ``grace_s``; True if something was stopped."""
        pid = self.read_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.2)
        # Kill the whole group: children (python stubs) may outlive their parent.
        _signal_group(pid, signal.SIGKILL)
        _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _reap(pid: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            if not pid_alive(pid):
                return
        time.sleep(0.05)


def tail(path: Path, lines: int = 15) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log yet)"
    return "\n".join("    " + line for line in content[-lines:])
