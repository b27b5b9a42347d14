"""The worker and the trainer (and for `cai run` the dashboard) as background child processes
of `cai run` and `cai bench`.

Each runs ``python -m cai worker`` / ``python -m cai trainer`` with its log under the state
folder and a PID file, like the services (``stack/processes.py``), so a second `cai run`
finds them running and Ctrl-C stops them. Their settings travel the way each reads them: the
worker's as ``CAI_PIPELINE_*`` variables (``child_env``), the trainer's as a config file
(``trainer_argv``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from core.settings import StackSettings
from stack.processes import ManagedProcess

CHILDREN = ("worker", "trainer")
OPTIONAL = ("dashboard",)  # stopped with the others; the run goes on without it
CAI = (sys.executable, "-m", "cai")


def child(settings: StackSettings, name: str) -> ManagedProcess:
    return ManagedProcess(name, settings.state_dir / "pids" / f"{name}.pid",
                          settings.logs_dir / f"{name}.log")


def worker_argv() -> list[str]:
    return [*CAI, "worker", "--worker-id", "run-worker"]


def trainer_argv(config_file: Path) -> list[str]:
    return [*CAI, "trainer", "--config", str(config_file)]


def child_env(settings: StackSettings, model: str, rounds: int,
              pipeline: dict[str, str]) -> dict[str, str]:
    """The environment of both children: this stack, this model, the worker's settings."""
    env = dict(os.environ)
    env["CAI_STATE_DIR"] = str(settings.state_dir)
    env["CAI_CACHE_DIR"] = str(settings.cache_dir)
    # The addresses this run resolved, so a child reaches the same services whatever its own
    # defaults say (ports given in code, not only in the environment).
    env["CAI_KAFKA_BOOTSTRAP"] = settings.kafka_address
    env["CAI_REDIS_URL"] = settings.redis_address
    env["CAI_TRITON_HTTP_URL"] = settings.triton_http
    env["CAI_TRITON_GRPC_URL"] = settings.triton_grpc
    env["CAI_MODEL"] = model
    env["CAI_PIPELINE_ROUNDS"] = str(rounds)
    env["CAI_PIPELINE_DATA_DIR"] = str(settings.state_dir / "faust")
    env.update(pipeline)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def start(settings: StackSettings, argvs: dict[str, list[str]], env: dict[str, str]) -> None:
    """Start each named child that is not running yet."""
    for name, argv in argvs.items():
        proc = child(settings, name)
        if proc.read_pid() is not None:
            continue
        proc.start(argv, healthy=lambda: True, timeout_s=5, env=env,
                   fix_hint=f"read {proc.log_file}")


def stop(settings: StackSettings) -> None:
    for name in CHILDREN + OPTIONAL:
        child(settings, name).stop(grace_s=30)


def dead(settings: StackSettings) -> list[str]:
    """The children that are not running (any more)."""
    return [n for n in CHILDREN if child(settings, n).read_pid() is None]
