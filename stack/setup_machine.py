"""`cai setup`: prepare everything the stack needs, skipping what is already done: Redis from
Debian, Kafka's jars, the Triton backend folder, models, the dashboard's browser libraries
(``stack/web_assets.py``), and with ``--test-tools`` Chromium, ChromeDriver and Prometheus."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from core.settings import StackSettings
from serving import models, triton_server
from stack import kafka, web_assets
from stack.processes import ServiceError

logger = logging.getLogger(__name__)


# What the browser and Prometheus tests need, from Debian: `cai setup --test-tools`.
TEST_TOOLS = {"chromium": "/usr/bin/chromium", "chromium-driver": "/usr/bin/chromedriver",
              "prometheus": "/usr/bin/promtool"}


def ensure_apt(packages: dict[str, str], services: tuple[str, ...] = ()) -> str:
    """Install the Debian ``packages`` ({package: a file it installs}) that are missing, then stop
    the system ``services`` their install may start (the stack runs its own, on its ports)."""
    missing = [name for name, path in packages.items()
               if not (Path(path).exists() or shutil.which(Path(path).name))]
    if not missing:
        return "already installed"
    if shutil.which("apt-get") is None:
        raise ServiceError(f"{', '.join(missing)} missing and apt-get is not available. "
                           "Fix: install them yourself and put them on PATH.")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        result = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if result.returncode != 0:
            raise ServiceError(f"`{' '.join(cmd)}` failed:\n{result.stderr[-2000:]}\n"
                               "Fix: run it as root, or install the packages yourself.")
    for service in services:
        subprocess.run(["service", service, "stop"], capture_output=True, check=False)
    return f"installed {', '.join(missing)} from Debian"


def ensure_redis() -> str:
    # Debian starts a system redis on 6379 after install; the stack runs its own.
    return ensure_apt({"redis-server": "/usr/bin/redis-server"}, services=("redis-server",))


def ensure_test_tools() -> str:
    # Debian may start Prometheus and its node exporter (9090, 9100); the tests run their own.
    return ensure_apt(TEST_TOOLS, services=("prometheus", "prometheus-node-exporter"))


def backend_dir(settings: StackSettings) -> Path:
    return triton_server.backend_dir(settings.cache_dir)


def run(settings: StackSettings, with_models: tuple[str, ...] = ("tiny", "smollm2"),
        test_tools: bool = False) -> None:
    steps = [
        ("redis-server", ensure_redis),
        ("kafka jars", lambda: _kafka_jars(settings)),
        ("triton backend", lambda: str(triton_server.build_backend_dir(backend_dir(settings)))),
        ("dashboard assets", lambda: web_assets.ensure(settings)),
    ]
    if test_tools:
        steps.append(("test tools (chromium, chromium-driver, prometheus)", ensure_test_tools))
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
