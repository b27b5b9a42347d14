"""Fixtures for serving tests: the tiny model in-process, and a private Redis + Triton.

The serving stack is private (own state dir and free ports) because the hot-swap tests
publish policy versions, which must not leak into other packages' tests.
"""

from __future__ import annotations

import pytest

from core.settings import ModelSettings, StackSettings
from serving.models import resolve
from stack import services as stack
from stack.processes import ServiceError
from tests.conftest import fresh_stack_settings, service_unavailable


@pytest.fixture(scope="session")
def cache_dir():
    return StackSettings().cache_dir


@pytest.fixture(scope="session")
def tiny_generator(cache_dir):
    from serving.textgen import TextGenerator

    return TextGenerator(resolve("tiny", cache_dir), threads=1)


@pytest.fixture(scope="module")
def serving_stack(tmp_path_factory):
    """Redis + Triton serving the four roles with the tiny model, on free ports."""
    settings: StackSettings = fresh_stack_settings(tmp_path_factory.mktemp("serving-stack"))
    try:
        stack.up(settings, ModelSettings(model="tiny"), services=("redis", "triton"))
    except (ServiceError, RuntimeError, OSError) as exc:
        stack.down(settings, services=("redis", "triton"))
        service_unavailable(f"could not start redis + triton: {exc}")
    yield settings
    stack.down(settings, services=("redis", "triton"))
