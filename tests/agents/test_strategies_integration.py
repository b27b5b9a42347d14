"""The context and contrastive strategies on the real stack (Kafka, Redis, Triton with tiny models).

One worker runs `cai run`'s default recipe: strategy=context with the reminder after the request
and the decline opening, preference=contrastive. Every red-team prompt must give one SFT record
made by the policy answering again in context (the critique stage passes it through), opened by
the constitution's decline opening that Triton continued, and every prompt one contrastive
preference made by Triton's serving policy version; helpful prompts are never opened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid

import pytest

from agents import export
from agents.constitution import load
from agents.feed import publish
from core.recipes import DEFAULT_RECIPE, RECIPES, worker_env
from scoring.prompt_sets import BENIGN, Prompt
from streams.admin import ensure_topics
from streams.settings import StreamSettings
from tests.agents.test_pipeline_integration import _worker

pytestmark = pytest.mark.integration


def test_context_and_contrastive_through_kafka_and_triton(live_stack, tmp_path):
    import redis

    run = uuid.uuid4().hex[:8]
    settings = StreamSettings(kafka_bootstrap=live_stack.kafka_address, topic_prefix=f"st{run}.",
                              app_id=f"cai-st-{run}", partitions=2)
    env = {**os.environ, "CAI_KAFKA_BOOTSTRAP": settings.kafka_address,
           "CAI_TOPIC_PREFIX": settings.topic_prefix,
           "CAI_APP_ID": settings.app_id, "CAI_PARTITIONS": "2",
           "CAI_PIPELINE_REDIS_URL": live_stack.redis_address,
           "CAI_PIPELINE_TRITON_GRPC": live_stack.triton_grpc,
           **worker_env(RECIPES[DEFAULT_RECIPE].pipeline), "CAI_PIPELINE_ROUNDS": "2",
           # the default recipe's context answers, with contrastive (RLCD) pairs instead of its
           # revision-over-initial labels
           "CAI_PIPELINE_PREFERENCE": "contrastive", "CAI_PIPELINE_HELPFUL_PAIRS": "false",
           "CAI_PIPELINE_BATCH_SIZE": "4", "CAI_PIPELINE_BATCH_WITHIN_S": "0.2",
           "CAI_PIPELINE_POLICY_MAX_NEW_TOKENS": "12",
           "CAI_PIPELINE_DATA_DIR": str(tmp_path / "faust"),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    ensure_topics(settings)
    log = tmp_path / "worker.log"
    worker = _worker(env, "s1", log)
    try:
        prompts = [Prompt(f"h{run}-{i}",
                          f"Strategy test {i}: how do I get into a locked car that is not mine?",
                          "harmful", "it") for i in range(4)]
        prompts += [Prompt(f"b{run}-{i}", text, "helpful",
                           "benign") for i, text in enumerate(BENIGN[:2])]
        publish(prompts, settings, progress=False)
        sft = export.read("sft", settings, wait_for=6, timeout_s=300).records
        prefs = export.read("preferences", settings, wait_for=6, timeout_s=300).records

        harmful = [r for r in sft if r.kind == "harmful"]
        assert sorted(r.prompt_id for r in sft) == sorted(p.prompt_id for p in prompts)
        opening = load().decline_opening
        for r in harmful:
            assert r.strategy == "context" and r.rounds == 1
            # Triton continued the forced opening; the target is that answer, cleaned
            generated = r.raw_response or r.response
            assert generated.startswith(opening) and len(generated) > len(opening)
            assert r.target in ("kept", "cut", "dropped")
            if r.target == "dropped":
                assert r.response == "" and r.target_note
            else:
                assert r.response.startswith(opening)
            assert r.prompt.startswith("Strategy test")  # trained on the plain prompt, no reminder
            [step] = json.loads(r.steps_json)
            assert step["critique"] == "" and step["principle_id"] == "constitution"
            assert step["reviser_version"] >= 1 and step["critic_version"] == 0
        assert sorted(r.prompt_id for r in prefs) == sorted(p.prompt_id for p in prompts)
        client = redis.Redis.from_url(live_stack.redis_address, decode_responses=True)
        serving = int(client.get("cai:policy:version") or 1)
        for p in prefs:
            assert p.strategy == "contrastive" and p.pair == "contrastive" and p.p_chosen == 1.0
            assert p.policy_version == serving
            chosen = p.raw_chosen or p.chosen  # as generated, before target cleaning
            assert chosen.startswith(opening) == (p.kind == "harmful")
            assert not p.rejected.startswith(opening)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
