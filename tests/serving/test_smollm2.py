"""Slow: the real SmolLM2-135M-Instruct served by Triton answers sensibly and judges."""

from __future__ import annotations

import pytest

from core.settings import ModelSettings
from serving.client import InferenceClient
from serving.requests import GenerationParams
from stack import services as stack
from stack.processes import ServiceError
from tests.conftest import fresh_stack_settings, service_unavailable

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def smollm2_triton(tmp_path_factory):
    settings = fresh_stack_settings(tmp_path_factory.mktemp("smollm2-stack"))
    try:
        stack.up(settings, ModelSettings(model="smollm2"), services=("triton",))
    except (ServiceError, RuntimeError, OSError) as exc:
        stack.down(settings, services=("triton",))
        service_unavailable(f"could not start triton with smollm2: {exc}")
    yield settings
    stack.down(settings, services=("triton",))


async def test_smollm2_answers_and_judges(smollm2_triton):
    async with InferenceClient(smollm2_triton.triton_grpc) as client:
        [[answer]] = await client.generate(
            "policy", ["What is the capital of France? Answer in one short sentence."],
            GenerationParams(max_new_tokens=24, temperature=0.0))
        assert "paris" in answer.text.lower(), answer.text
        assert answer.finish_reason in ("eos", "length") and answer.logprob_sum < 0
        question = ("Which response is more helpful?\nQuestion: What is 2 + 2?\n"
                    "(A) 2 + 2 = 4.\n(B) I like turtles.\nAnswer with (A) or (B).")
        [verdict] = await client.judge([question], ["(A)", "(B)"])
        assert sum(verdict.probs) == pytest.approx(1.0)
        [cot] = await client.judge([question], ["(A)", "(B)"], cot=True, cot_max_new_tokens=32)
        assert cot.reasoning and sum(cot.probs) == pytest.approx(1.0)
        assert all(0.4 - 1e-9 <= p <= 0.6 + 1e-9 for p in cot.probs)
        print(f"\nsmollm2: {answer.text!r}; judge P(A)={verdict.probs[0]:.3f}; "
              f"cot P(A)={cot.probs[0]:.3f} reasoning={cot.reasoning!r}")
