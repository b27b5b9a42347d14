"""Integration tests on a real Triton (python backend) + Redis serving the tiny model.

The tests in this module run in order on one private stack: the policy starts at v1, the
hot-swap test publishes v2 under load (in place: the running instance takes the weights), a
corrupt checkpoint must leave v2 serving, and a rollback re-publishes v1's weights as v3.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
import urllib.request

import pytest
import redis
import torch

from serving.client import InferenceClient, InferenceError
from serving.models import build_tiny
from serving.publish import REDIS_VERSION_KEY, PublishError, publish_policy, rollback
from serving.repository import versions
from serving.requests import GenerationParams

pytestmark = pytest.mark.integration

GREEDY = GenerationParams(max_new_tokens=6, temperature=0.0, chat=False)
REFERENCE: dict[str, object] = {}


def redis_version(settings) -> str | None:
    return redis.Redis.from_url(settings.redis_address,
                                decode_responses=True).get(REDIS_VERSION_KEY)


def metric(settings, name: str, role: str) -> float:
    text = urllib.request.urlopen(f"http://{settings.triton_metrics}/metrics",
                                  timeout=5).read().decode()
    total = 0.0
    for match in re.finditer(rf'^{name}\{{([^}}]*)\}} ([0-9.e+]+)$', text, re.MULTILINE):
        if f'role="{role}"' in match.group(1):
            total += float(match.group(2))
    return total


async def test_four_roles_answer_with_the_right_shapes(serving_stack):
    async with InferenceClient(serving_stack.triton_grpc) as client:
        for role in ("policy", "critic", "reviser"):
            results = await client.generate(role, ["Hello", "How are you today?"],
                                            GenerationParams(max_new_tokens=5, seed=1,
                                                             num_samples=2))
            assert [len(r) for r in results] == [2, 2]
            for per_prompt in results:
                for g in per_prompt:
                    assert g.model_version == 1
                    assert 1 <= g.completion_tokens <= 5 and g.prompt_tokens > 0
                    assert isinstance(g.text, str) and g.logprob_sum < 0
            assert results[0][0].text != results[0][1].text  # two samples, two seeds
        verdicts = await client.judge(["Which is kinder? (A) yes (B) no", "Second?"],
                                      ["(A)", "(B)"])
        assert len(verdicts) == 2
        for verdict in verdicts:
            assert len(verdict.probs) == 2 and sum(verdict.probs) == pytest.approx(1.0)
            assert verdict.model_version == 1 and verdict.reasoning is None
        [cot] = await client.judge(["Think first?"], ["(A)", "(B)"], cot=True, cot_max_new_tokens=4)
        assert cot.reasoning is not None and all(0.4 - 1e-9 <= p <= 0.6 + 1e-9 for p in cot.probs)
        # Seeded answers are reproducible through the server too.
        again = await client.generate("policy", ["Hello"],
                                      GenerationParams(max_new_tokens=5, seed=1))
        assert again[0][0].text == results[0][0].text
        [[v1]] = await client.generate("policy", ["Tell me about version one"], GREEDY)
        REFERENCE["v1"] = v1


async def test_a_bad_request_fails_alone(serving_stack):
    async with InferenceClient(serving_stack.triton_grpc, max_retries=0) as client:
        good = [client.generate("critic", [f"prompt {i}"],
                                GenerationParams(max_new_tokens=3)) for i in range(4)]
        bad = client.generate("critic", ["word " * 2100],
                              GenerationParams(max_new_tokens=3, chat=False))
        outcomes = await asyncio.gather(*good, bad, return_exceptions=True)
    assert all(isinstance(o, list) and o[0][0].model_version == 1 for o in outcomes[:4]), outcomes
    assert isinstance(outcomes[4], InferenceError)
    assert "critic" in str(outcomes[4]) and "context" in str(outcomes[4])


async def test_metrics_count_requests_and_tokens(serving_stack):
    before_requests = metric(serving_stack, "cai_requests_total", "reviser")
    before_tokens = metric(serving_stack, "cai_generated_tokens_total", "reviser")
    async with InferenceClient(serving_stack.triton_grpc) as client:
        results = await client.generate("reviser", ["a", "b", "c"],
                                        GenerationParams(max_new_tokens=4, num_samples=2))
    generated = sum(g.completion_tokens for r in results for g in r)
    assert metric(serving_stack, "cai_requests_total", "reviser") - before_requests == 3
    assert metric(serving_stack, "cai_generated_tokens_total",
                  "reviser") - before_tokens == generated
    text = urllib.request.urlopen(f"http://{serving_stack.triton_metrics}/metrics").read().decode()  # noqa: ASYNC210
    assert 'nv_inference_request_success{model="reviser",version="1"}' in text


async def test_same_version_reload_keeps_serving_and_counting(serving_stack, cache_dir):
    """A changed config reloads the same version; the new process's counters must work
    (Triton 2.51 frees metrics shared across processes on unload: server#8663)."""
    import tritonclient.http as httpclient

    from core.settings import ModelSettings
    from serving.repository import render_repository

    render_repository(serving_stack.triton_repository, ModelSettings(model="tiny"), cache_dir,
                      roles=("critic",), max_queue_delay_us=2000)
    client = httpclient.InferenceServerClient(serving_stack.triton_http, network_timeout=120)
    client.load_model("critic")
    client.close()
    for _ in range(2):
        before = metric(serving_stack, "cai_requests_total", "critic")
        async with InferenceClient(serving_stack.triton_grpc, timeout_s=60) as inference:
            results = await inference.generate("critic", ["one", "two"],
                                               GenerationParams(max_new_tokens=3))
        assert [r[0].model_version for r in results] == [1, 1]
        assert metric(serving_stack, "cai_requests_total", "critic") - before == 2


async def test_publish_under_load_fails_no_request(serving_stack, cache_dir):
    checkpoint = build_tiny(cache_dir, seed=1)
    announced = []
    stop = asyncio.Event()
    answers: list[tuple[float, float, int]] = []  # (sent, received, version)
    errors: list[BaseException] = []

    async def worker(client: InferenceClient, k: int) -> None:
        i = 0
        while not stop.is_set():
            sent = time.monotonic()
            try:
                [[g]] = await client.generate("policy", [f"worker {k} request {i}"],
                                              GenerationParams(max_new_tokens=8, seed=i))
                answers.append((sent, time.monotonic(), g.model_version))
            except Exception as exc:  # noqa: BLE001 (any failure fails the test)
                errors.append(exc)
            i += 1

    async with InferenceClient(serving_stack.triton_grpc, max_retries=0) as client:
        workers = [asyncio.create_task(worker(client, k)) for k in range(8)]
        await asyncio.sleep(1.0)
        started = time.monotonic()
        version = await asyncio.to_thread(
            publish_policy, checkpoint, serving_stack, announce=lambda v,
            c: announced.append((v, c)))
        published = time.monotonic()
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*workers)
    assert errors == []
    assert version == 2 and announced == [(2, str(checkpoint))]
    assert redis_version(serving_stack) == "2"
    before = [v for sent, _, v in answers if sent < started]
    after = [v for sent, _, v in answers if sent > published]
    assert before and set(before) == {1}
    assert after and set(after) == {2}
    # In place: the instance took the weights; Triton did not load another version.
    from serving.hot_swap import served_versions
    from serving.publish import serving_status

    assert served_versions(serving_stack.triton_repository / "policy") == [2]
    [entry] = serving_status(serving_stack)["roles"]["policy"]
    assert entry == {"version": "2", "state": "READY", "loaded_as": "1"}
    assert published - started < 10  # about 0.5 s on two cores; a reload took 5 s idle
    print(f"hot swap: {published - started:.2f}s, {len(answers)} requests, 0 failed")


async def test_corrupt_checkpoint_leaves_the_current_version_serving(
        serving_stack, cache_dir, tmp_path):
    from safetensors.torch import save_file

    serving = int(redis_version(serving_stack))
    bad = tmp_path / "bad"
    shutil.copytree(build_tiny(cache_dir, seed=1), bad)
    # A valid safetensors file with the wrong tensors: it passes validation, Triton fails to load
    # it.
    save_file({"model.embed_tokens.weight": torch.zeros(3, 3)}, str(bad / "model.safetensors"))
    with pytest.raises(PublishError,
                       match=f"(?s)could not load policy v{serving + 1}.*v{serving} keeps serving"):
        publish_policy(bad, serving_stack)
    assert versions(serving_stack.triton_repository / "policy")[-1] == serving
    # Garbage bytes are refused before Triton is touched.
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(PublishError, match="not a valid safetensors"):
        publish_policy(bad, serving_stack)
    async with InferenceClient(serving_stack.triton_grpc) as client:
        [[g]] = await client.generate("policy", ["still there?"],
                                      GenerationParams(max_new_tokens=3))
    assert g.model_version == serving
    assert redis_version(serving_stack) == str(serving)


async def test_rollback_serves_old_weights_as_a_new_version(serving_stack):
    before = versions(serving_stack.triton_repository / "policy")
    new = await asyncio.to_thread(rollback, 1, serving_stack, keep_last=1)
    assert new == max(before) + 1
    assert redis_version(serving_stack) == str(new)
    async with InferenceClient(serving_stack.triton_grpc) as client:
        [[g]] = await client.generate("policy", ["Tell me about version one"], GREEDY)
    assert g.model_version == new
    v1 = REFERENCE["v1"]
    assert g.text == v1.text and g.logprob_sum == pytest.approx(v1.logprob_sum, abs=1e-4)
    # keep_last=1: only the newest published version and the base pointer (v1) stay on disk.
    assert versions(serving_stack.triton_repository / "policy") == [1, new]
    with pytest.raises(PublishError, match="not in"):
        rollback(2, serving_stack)


def test_cli_serve_status_reports_roles_and_the_redis_pointer(serving_stack, monkeypatch, capsys):
    import json

    from cai.cli import main

    monkeypatch.setenv("CAI_TRITON_HTTP_PORT", str(serving_stack.triton_http_port))
    monkeypatch.setenv("CAI_REDIS_PORT", str(serving_stack.redis_port))
    assert main(["serve-status", "--state-dir", str(serving_stack.state_dir), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert {"policy", "critic", "reviser", "judge"} <= set(status["roles"])
    ready = [e["version"] for e in status["roles"]["policy"] if e.get("state") == "READY"]
    assert ready == [status["redis_policy_version"]]
    assert int(ready[0]) == status["policy_versions_on_disk"][-1]


def test_a_publish_killed_before_redis_is_completed_without_a_new_number(serving_stack, cache_dir):
    from serving.publish import REDIS_CHECKPOINTS_KEY, adopt_published
    from streams.settings import StreamSettings
    from trainer.publisher import StackPublisher

    checkpoint = build_tiny(cache_dir, seed=3)
    version = publish_policy(checkpoint, serving_stack)
    client = redis.Redis.from_url(serving_stack.redis_address, decode_responses=True)
    # A kill after the version folder was installed and loaded, before Redis was written:
    client.set(REDIS_VERSION_KEY, str(version - 1))
    client.hdel(REDIS_CHECKPOINTS_KEY, str(version))
    assert adopt_published(build_tiny(cache_dir, seed=4),
                           serving_stack) is None  # not the newest folder
    publisher = StackPublisher(serving_stack, StreamSettings(kafka_bootstrap="unused:9092"))
    assert publisher.find_published(checkpoint) == version  # the restart adopts it ...
    assert redis_version(serving_stack) == str(version)
    assert client.hget(REDIS_CHECKPOINTS_KEY, str(version)) == str(checkpoint.resolve())
    # ... and spends no number
    assert max(versions(serving_stack.triton_repository / "policy")) == version


def test_with_redis_down_a_published_round_is_found_not_published_again(serving_stack,
                                                                        cache_dir):
    from streams.settings import StreamSettings
    from trainer.publisher import StackPublisher

    checkpoint = build_tiny(cache_dir, seed=5)
    version = publish_policy(checkpoint, serving_stack)
    no_redis = serving_stack.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    publisher = StackPublisher(no_redis, StreamSettings(kafka_bootstrap="unused:9092"))
    with pytest.raises(PublishError) as caught:  # found in the repository; Redis is an outage
        publisher.find_published(checkpoint)
    assert caught.value.retryable
    assert max(versions(serving_stack.triton_repository / "policy")) == version  # no new number
    assert StackPublisher(serving_stack, StreamSettings(
        kafka_bootstrap="unused:9092")).find_published(checkpoint) == version


def test_a_load_that_cannot_reach_triton_rolls_back_and_is_retryable(serving_stack, cache_dir,
                                                                      tmp_path):
    from serving.hot_swap import INSTANCES_DIR, SWAP_FILE

    checkpoint = build_tiny(cache_dir, seed=6)
    # Triton down: no instance follows the control file (a copy of the repository that none
    # watches), so the publish reloads through Triton, which does not answer.
    down = serving_stack.model_copy(update={"triton_http_url": "127.0.0.1:1",
                                            "state_dir": tmp_path / "state"})
    shutil.copytree(serving_stack.triton_repository, down.triton_repository, symlinks=True,
                    ignore=shutil.ignore_patterns(INSTANCES_DIR, SWAP_FILE))
    before = versions(down.triton_repository / "policy")
    with pytest.raises(PublishError) as caught:
        publish_policy(checkpoint, down, timeout_s=5)
    assert caught.value.retryable and "Removed" in str(caught.value)
    assert versions(down.triton_repository / "policy") == before


async def test_without_hot_swap_a_publish_reloads_the_model(serving_stack, cache_dir):
    """Instances that do not follow the control file (hot_swap off, or an older model.py) get
    the new version through a Triton reload, as before."""
    import tritonclient.http as httpclient

    from core.settings import ModelSettings
    from serving.hot_swap import instance_states
    from serving.publish import serving_status
    from serving.repository import render_repository

    render_repository(serving_stack.triton_repository, ModelSettings(model="tiny"), cache_dir,
                      roles=("policy",), hot_swap=False)
    client = httpclient.InferenceServerClient(serving_stack.triton_http, network_timeout=120)
    client.load_model("policy")
    client.close()
    # The old instance takes its answer file away when Triton unloads it, just after the load.
    deadline = time.monotonic() + 10
    while instance_states(serving_stack.triton_repository / "policy"):
        assert time.monotonic() < deadline, "the unloaded instance still reports"
        await asyncio.sleep(0.1)
    version = await asyncio.to_thread(publish_policy, build_tiny(cache_dir, seed=5), serving_stack)
    ready = [e for e in serving_status(serving_stack)["roles"]["policy"] if e["state"] == "READY"]
    assert ready == [{"version": str(version), "state": "READY"}]
    async with InferenceClient(serving_stack.triton_grpc) as inference:
        [[g]] = await inference.generate("policy", ["hi"], GenerationParams(max_new_tokens=2))
    assert g.model_version == version
    assert redis_version(serving_stack) == str(version)
