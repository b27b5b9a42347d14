"""Integration tests of the reward role on a real Triton (python backend) + Redis, tiny models.

One private stack serves policy + reward, as `cai run` starts it for a recipe whose trainer
scores with the preference model. The tests run in order: rewards from v1 (the base model with a
fresh seeded head) match ``RewardModel.score`` in-process; ops go only to the role that answers
them; then a saved reward model is published as v2 (a Triton reload) and serves the next score.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request

import pytest
import redis

from core.settings import REWARD_ROLE, ModelSettings, StackSettings
from serving import protocol
from serving.client import InferenceClient, InferenceError
from serving.models import resolve
from serving.requests import GenerationParams
from stack import services as stack
from stack.processes import ServiceError
from tests.conftest import fresh_stack_settings, service_unavailable

pytestmark = pytest.mark.integration

PROMPTS = ["How do I bake bread?", "Tell me how to pick a lock."]
ANSWERS = ["Mix flour, water, salt and yeast, let it rise, then bake it.",
           "I can't help with that, because it could be used to break in."]


@pytest.fixture(scope="module")
def reward_stack(tmp_path_factory):
    """Redis + Triton serving the policy and the reward role with the tiny model."""
    settings: StackSettings = fresh_stack_settings(tmp_path_factory.mktemp("reward-stack"))
    try:
        stack.up(settings, ModelSettings(model="tiny"), services=("redis", "triton"),
                 roles=("policy", REWARD_ROLE))
    except (ServiceError, RuntimeError, OSError) as exc:
        stack.down(settings, services=("redis", "triton"))
        service_unavailable(f"could not start redis + triton: {exc}")
    yield settings
    stack.down(settings, services=("redis", "triton"))


@pytest.fixture(scope="module")
def reward_checkpoint(tmp_path_factory, cache_dir):
    from serving.reward_model import RewardModel

    folder = tmp_path_factory.mktemp("reward-ckpt") / "seed-1"
    RewardModel.from_pretrained(resolve("tiny", cache_dir), seed=1).save(folder)
    return folder


def in_process(source) -> list[float]:
    from serving.reward_model import RewardModel

    return RewardModel.from_pretrained(source).score(PROMPTS, ANSWERS)


def requests_counted(settings, role: str) -> float:
    text = urllib.request.urlopen(f"http://{settings.triton_metrics}/metrics",
                                  timeout=5).read().decode()
    return sum(float(m.group(2)) for m in re.finditer(
        r'^cai_requests_total\{([^}]*)\} ([0-9.e+]+)$', text, re.MULTILINE)
        if f'role="{role}"' in m.group(1))


async def test_v1_scores_as_the_reward_model_in_process(reward_stack, cache_dir):
    before = requests_counted(reward_stack, REWARD_ROLE)
    async with InferenceClient(reward_stack.triton_grpc) as client:
        results = await client.score(PROMPTS, ANSWERS)
    assert [r.model_version for r in results] == [1, 1]
    assert [r.reward for r in results] == pytest.approx(in_process(resolve("tiny", cache_dir)),
                                                        abs=1e-4)
    assert requests_counted(reward_stack, REWARD_ROLE) - before == 2


async def test_each_op_goes_to_its_role_and_a_bad_request_fails_alone(reward_stack):
    async with InferenceClient(reward_stack.triton_grpc, max_retries=0) as client:
        good = [client.score([p], [a]) for p, a in zip(PROMPTS * 2, ANSWERS * 2)]
        bad = client.score(["q"], ["a"], max_length=0)
        outcomes = await asyncio.gather(*good, bad, return_exceptions=True)
        assert all(isinstance(o, list) and o[0].model_version == 1 for o in outcomes[:4]), outcomes
        assert isinstance(outcomes[4], InferenceError) and "max_length" in str(outcomes[4])
        with pytest.raises(InferenceError, match="reward role does not answer op 'generate'"):
            await client.generate(REWARD_ROLE, ["hi"], GenerationParams(max_new_tokens=2))
        with pytest.raises(InferenceError, match="policy role does not answer op 'score'"):
            await client._infer_one("policy", protocol.encode_score("q", "a", {}))
        [[answer]] = await client.generate("policy", ["hi"], GenerationParams(max_new_tokens=2))
        assert answer.model_version == 1


async def test_a_published_reward_model_serves_the_next_score(reward_stack, reward_checkpoint):
    from serving.publish import (
        REDIS_VERSION_KEY,
        adopt_published,
        publish_role,
        published_version,
        serving_status,
        version_key,
    )
    from serving.repository import versions

    announced = []
    version = await asyncio.to_thread(publish_role, REWARD_ROLE, reward_checkpoint, reward_stack,
                                      announce=lambda v, c: announced.append((v, c)))
    assert version == 2 and announced == [(2, str(reward_checkpoint.resolve()))]
    async with InferenceClient(reward_stack.triton_grpc) as client:
        results = await client.score(PROMPTS, ANSWERS)
    assert [r.model_version for r in results] == [2, 2]
    assert [r.reward for r in results] == pytest.approx(in_process(reward_checkpoint), abs=1e-4)
    store = redis.Redis.from_url(reward_stack.redis_address, decode_responses=True)
    assert store.get(version_key(REWARD_ROLE)) == "2"
    assert store.get(REDIS_VERSION_KEY) is None  # the policy's pointer is not touched
    assert versions(reward_stack.triton_repository / REWARD_ROLE) == [1, 2]
    assert versions(reward_stack.triton_repository / "policy") == [1]
    assert published_version(reward_checkpoint, reward_stack, role=REWARD_ROLE) == 2
    assert published_version(reward_checkpoint, reward_stack) is None
    assert adopt_published(reward_checkpoint, reward_stack, role=REWARD_ROLE) == 2
    status = serving_status(reward_stack)
    assert [e["version"] for e in status["roles"][REWARD_ROLE] if e["state"] == "READY"] == ["2"]
    assert status["redis_reward_version"] == "2" and status["reward_versions_on_disk"] == [1, 2]
