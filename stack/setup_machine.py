"""`cai setup`: prepare everything the stack needs, skipping what is already done."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

from core.settings import StackSettings
from serving import models, triton_server
from stack import kafka
from stack.processes import ServiceError

logger = logging.getLogger(__name__)


def ensure_redis() -> str:
    if shutil.which("redis-server") or Path("/usr/bin/redis-server").exists():
        return "already installed"
    if shutil.which("apt-get") is None:
        raise ServiceError("redis: redis-server is missing and apt-get is not available. "
                           "Fix: install Redis 7 and put redis-server on PATH.")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServiceError(f"redis: `{' '.join(cmd)}` failed:\n{result.stderr[-2000:]}\n"
                               "Fix: run it as root, or install redis-server yourself.")
    # Debian starts a system redis on 6379 after install; the stack runs its own.
    subprocess.run(["service", "redis-server", "stop"], capture_output=True, check=False)
    return "installed from Debian"


def backend_dir(settings: StackSettings) -> Path:
    return triton_server.backend_dir(settings.cache_dir)


def run(settings: StackSettings, with_models: tuple[str, ...] = ("tiny", "smollm2")) -> None:
    steps = [
        ("redis-server", ensure_redis),
        ("kafka jars", lambda: _kafka_jars(settings)),
        ("triton backend", lambda: str(triton_server.build_backend_dir(backend_dir(settings)))),
    ]
    for name in with_models:
        steps.append((f"model {name}", lambda name=name: models.resolve(name, settings.cache_dir)))
    for name, step in steps:
        started = time.monotonic()
        print(f"setup: {name} ...", flush=True)
        detail = step()
        print(f"setup: {name} ok ({time.monotonic() - started:.1f}s) {detail or ''}", flush=True)


def _kafka_jars(settings: StackSettings) -> str:
    if kafka.jars_ready(settings):
        return "already fetched"
    kafka.fetch_jars(settings)
    return f"fetched into {kafka.libs_dir(settings)}"
