"""Local Redis: Debian's redis-server on a loopback port, data under the state folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from core.settings import StackSettings
from stack.processes import ServiceError


def prepare(settings: StackSettings) -> tuple[list[str], Path]:
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        raise ServiceError(
            "redis: redis-server is not installed. Fix: run `cai setup` "
            "(or apt-get install -y redis-server)."
        )
    data_dir = (settings.state_dir / "redis").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary, "--port", str(settings.redis_port), "--bind", settings.host,
        "--dir", str(data_dir), "--daemonize", "no", "--save", "",
        # Append-only file: idempotency keys survive a restart of the stack.
        "--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "no",
    ]
    return argv, settings.logs_dir / "redis.log"
