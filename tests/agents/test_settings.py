"""Pipeline settings: defaults, environment, and errors that say how to fix them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agents.settings import PipelineSettings
from core.settings import StackSettings


def test_defaults_point_at_the_local_stack(monkeypatch):
    for name in ("CAI_PIPELINE_REDIS_URL", "CAI_PIPELINE_TRITON_GRPC", "CAI_REDIS_URL",
                 "CAI_TRITON_GRPC_URL"):
        monkeypatch.delenv(name, raising=False)
    s = PipelineSettings()
    assert s.redis_address == StackSettings().redis_address
    assert s.triton_address == StackSettings().triton_grpc
    assert (s.rounds, s.compare, s.strategy, s.num_samples) == (2, "initial-vs-final",
                                                                "critique-revise", 1)


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("CAI_PIPELINE_ROUNDS", "4")
    monkeypatch.setenv("CAI_PIPELINE_COMPARE", "policy-samples")
    monkeypatch.setenv("CAI_PIPELINE_NUM_SAMPLES", "2")
    s = PipelineSettings()
    assert (s.rounds, s.compare, s.num_samples) == (4, "policy-samples", 2)


def test_policy_samples_needs_two_samples():
    with pytest.raises(ValidationError, match="needs num_samples >= 2"):
        PipelineSettings(compare="policy-samples", num_samples=1)


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"compare": "sideways"}, {"batch_size": 0},
                                    {"strategy": "magic"}, {"preference": "sideways"}])
def test_invalid_values_are_rejected(kwargs):
    with pytest.raises(ValidationError):
        PipelineSettings(**kwargs)
