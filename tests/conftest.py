"""Shared fixtures: a real Kafka + Redis + Triton stack on free ports for the test session.

Under ``CI=true`` a service that cannot start fails the run; elsewhere the
integration tests that need it are skipped with the reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch

from core.settings import ModelSettings, StackSettings
from stack import services as stack
from stack.processes import ServiceError, free_port

torch.set_num_threads(1)

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def service_unavailable(reason: str) -> None:
    """Fail under CI, skip elsewhere: a missing service must never pass silently in CI."""
    if IN_CI:
        pytest.fail(f"required service unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def poll_until(predicate, timeout: float, what: str, logs: Iterable[Path] = (),
               poll_s: float = 1.0) -> None:
    """Poll ``predicate`` until it is true; after ``timeout`` seconds fail with the tails of the
    child processes' ``logs``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                      for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def stack_env(stack: StackSettings, **extra: str) -> dict[str, str]:
    """The environment of a `cai` child process on ``stack``: its folders, every service's
    address, one torch thread; ``extra`` on top."""
    return {**os.environ, "CAI_STATE_DIR": str(stack.state_dir),
            "CAI_CACHE_DIR": str(stack.cache_dir), "CAI_KAFKA_BOOTSTRAP": stack.kafka_address,
            "CAI_REDIS_URL": stack.redis_address, "CAI_TRITON_HTTP_URL": stack.triton_http,
            "CAI_TRITON_GRPC_URL": stack.triton_grpc, "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1", **extra}


def fresh_stack_settings(state_dir) -> StackSettings:
    """Settings for a private stack: every port free, state under ``state_dir``."""
    return StackSettings(
        state_dir=state_dir,
        kafka_port=free_port(), kafka_controller_port=free_port(), redis_port=free_port(),
        triton_http_port=free_port(), triton_grpc_port=free_port(),
        triton_metrics_port=free_port(),
        kafka_bootstrap=None, redis_url=None, triton_http_url=None, triton_grpc_url=None,
    )


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory) -> StackSettings:
    return fresh_stack_settings(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="session")
def model_settings() -> ModelSettings:
    return ModelSettings(model="tiny", policy_model=None, critic_model=None,
                         reviser_model=None, judge_model=None)


def _start(settings: StackSettings, models: ModelSettings | None, services: tuple[str, ...]):
    try:
        stack.up(settings, models, services=services)
    except (ServiceError, RuntimeError, OSError) as exc:
        stack.down(settings)
        service_unavailable(f"could not start {', '.join(services)}: {exc}")


@pytest.fixture(scope="session")
def kafka_redis(stack_settings):
    """Real Kafka (KRaft) and Redis; Triton is not started."""
    _start(stack_settings, None, ("kafka", "redis"))
    yield stack_settings
    stack.down(stack_settings)


@pytest.fixture(scope="session")
def live_stack(kafka_redis, model_settings):
    """Real Kafka, Redis and Triton serving the four roles with tiny models."""
    _start(kafka_redis, model_settings, stack.SERVICES)
    yield kafka_redis
    stack.down(kafka_redis)
