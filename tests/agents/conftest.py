"""Fixtures for agent unit tests: a fresh Faust app per test with fake Triton, Redis and sender."""

from __future__ import annotations

import asyncio

import pytest

from agents import constitution
from agents.app import create_app
from agents.idempotency import Ledger
from agents.services import Services
from agents.settings import PipelineSettings
from streams.settings import StreamSettings
from tests.agents.fakes import CaptureSender, FakeInference, FakeRedis


def make_services(**overrides) -> Services:
    settings = PipelineSettings(**{"rounds": 2, "batch_size": 4, "batch_within_s": 0.05,
                                   "backoff_s": 0.0, "max_backoff_s": 0.0, "worker_id": "w1",
                                   **overrides})
    return Services(settings=settings, constitution=constitution.load(), inference=FakeInference(),
                    ledger=Ledger(FakeRedis(), "w1", poll_s=0.01), send=CaptureSender())


@pytest.fixture
def services() -> Services:
    return make_services()


@pytest.fixture
def make_pipeline(tmp_path):
    def build(services: Services):
        pipeline = create_app(StreamSettings(kafka_bootstrap="127.0.0.1:1"),
                              services.settings.model_copy(
            update={"data_dir": tmp_path}), services=services)
        pipeline.app.finalize()
        pipeline.app.conf.store = "memory://"
        pipeline.app.flow_control.resume()
        return pipeline
    return build


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
