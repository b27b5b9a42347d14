"""Unit tests: repository rendering, checkpoint validation, wire protocol, client errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.settings import ROLES, ModelSettings
from serving import protocol
from serving.client import InferenceClient, InferenceError
from serving.publish import PublishError, validate_checkpoint
from serving.repository import MODEL_FILE, read_version_source, render_repository, versions
from serving.requests import GenerationParams, GenRequest, JudgeRequest, RequestError
from stack.processes import free_port


def test_render_writes_every_role(tmp_path, cache_dir):
    models = ModelSettings(model="tiny", judge_model="tiny-0")
    render_repository(tmp_path, models, cache_dir, threads=2, instances=3, max_batch_size=8,
                      max_queue_delay_us=2500)
    for role in ROLES:
        config = (tmp_path / role / "config.pbtxt").read_text()
        assert f'name: "{role}"' in config and 'backend: "python"' in config
        assert "max_batch_size: 8" in config
        assert "max_queue_delay_microseconds: 2500" in config
        assert "count: 3 kind: KIND_CPU" in config
        assert "latest: { num_versions: 1 }" in config
        assert 'key: "threads" value: { string_value: "2" }' in config
        assert f'key: "role" value: {{ string_value: "{role}" }}' in config
        assert (tmp_path / role / "1" / "model.py").read_text() == MODEL_FILE.read_text()
        source = read_version_source(tmp_path / role / "1")
        assert (Path(source) / "config.json").exists()
    assert read_version_source(tmp_path / "judge" / "1").endswith("tiny-0")


def test_render_without_batching(tmp_path, cache_dir):
    render_repository(tmp_path, ModelSettings(model="tiny"), cache_dir, roles=("policy",),
                      batching=False)
    config = (tmp_path / "policy" / "config.pbtxt").read_text()
    assert "dynamic_batching" not in config
    assert versions(tmp_path / "policy") == [1]


def test_render_is_idempotent_and_keeps_published_versions(tmp_path, cache_dir):
    models = ModelSettings(model="tiny")
    render_repository(tmp_path, models, cache_dir, roles=("policy",))
    published = tmp_path / "policy" / "2"
    (published / "weights").mkdir(parents=True)
    (published / "source.json").write_text(json.dumps({"model": "weights"}))
    (published / "model.py").write_text("old adapter")
    before = (tmp_path / "policy" / "config.pbtxt").stat().st_mtime_ns
    render_repository(tmp_path, models, cache_dir, roles=("policy",))
    assert versions(tmp_path / "policy") == [1, 2]
    # unchanged file untouched
    assert (tmp_path / "policy" / "config.pbtxt").stat().st_mtime_ns == before
    assert (published / "model.py").read_text() == MODEL_FILE.read_text()  # adapter refreshed
    assert read_version_source(published) == str(published / "weights")


@pytest.fixture
def checkpoint(tmp_path, cache_dir):
    from serving.models import resolve

    folder = tmp_path / "ckpt"
    shutil.copytree(resolve("tiny", cache_dir), folder)
    return folder


def test_validate_accepts_a_safetensors_checkpoint(checkpoint):
    assert [p.name for p in validate_checkpoint(checkpoint)] == ["model.safetensors"]


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_validate_refuses_pickles(checkpoint, name):
    (checkpoint / name).write_bytes(b"\x80\x04pickle")
    with pytest.raises(PublishError, match="pickle"):
        validate_checkpoint(checkpoint)


def test_validate_refuses_missing_config_weights_or_garbage(checkpoint):
    (checkpoint / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(PublishError, match="not a valid safetensors"):
        validate_checkpoint(checkpoint)
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(PublishError, match="no \\*.safetensors"):
        validate_checkpoint(checkpoint)
    (checkpoint / "config.json").unlink()
    with pytest.raises(PublishError, match="config.json"):
        validate_checkpoint(checkpoint)
    with pytest.raises(PublishError, match="not a folder"):
        validate_checkpoint(checkpoint / "nope")


def test_protocol_round_trip_and_errors():
    request = protocol.decode_request(protocol.encode_generate(
        "hi", {"max_new_tokens": 5, "stop": ["\n"], "seed": 3}))
    assert request == GenRequest("hi", max_new_tokens=5, stop=("\n",), seed=3)
    judge = protocol.decode_request(protocol.encode_judge("q", ["(A)", "(B)"], True,
                                                          {"clamp": [0.3, 0.7]}))
    assert judge == JudgeRequest("q", choices=("(A)", "(B)"), cot=True, clamp=(0.3, 0.7))
    with pytest.raises(RequestError, match="unknown generate parameter"):
        protocol.decode_request(protocol.encode_generate("hi", {"max_tokens": 5}))
    with pytest.raises(RequestError, match="JSON"):
        protocol.decode_request(b"not json")
    with pytest.raises(RequestError, match="temperature"):
        protocol.decode_request(protocol.encode_generate("hi", {"temperature": -1}))


async def test_client_retries_then_names_role_and_url():
    url = f"127.0.0.1:{free_port()}"  # nothing listens here
    client = InferenceClient(url, max_retries=2, backoff_s=0.01)
    with pytest.raises(InferenceError) as info:
        await client.generate("critic", ["x"], GenerationParams(max_new_tokens=2))
    await client.close()
    message = str(info.value)
    assert "critic" in message and url in message and "3 attempts" in message
    assert info.value.retryable


def test_knobs_come_from_the_environment(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("CAI_SERVING_THREADS", "3")
    monkeypatch.setenv("CAI_SERVING_BATCHING", "false")
    render_repository(tmp_path, ModelSettings(model="tiny"), cache_dir, roles=("critic",),
                      instances=2)
    config = (tmp_path / "critic" / "config.pbtxt").read_text()
    assert 'key: "threads" value: { string_value: "3" }' in config
    assert "dynamic_batching" not in config and "count: 2 kind: KIND_CPU" in config


def test_a_new_base_model_is_refused_under_versions_trained_from_another(tmp_path, cache_dir):
    from serving.repository import RepositoryError, write_version

    render_repository(tmp_path, ModelSettings(model="tiny"), cache_dir, roles=("policy",))
    render_repository(tmp_path, ModelSettings(model="tiny"), cache_dir,
                      roles=("policy",))  # same: fine
    write_version(tmp_path / "policy", 2, {"model": "weights", "checkpoint": "/ckpt/round-1"})
    with pytest.raises(RepositoryError, match=r"trained from 'tiny'.*--model tiny.*--state-dir"):
        render_repository(tmp_path, ModelSettings(model="smollm2"), cache_dir, roles=("policy",))
    render_repository(tmp_path, ModelSettings(model="tiny"), cache_dir,
                      roles=("policy",))  # going on is fine


def test_the_device_sets_the_instance_kind(tmp_path, cache_dir, monkeypatch):
    from serving.repository import config_pbtxt

    assert "kind: KIND_GPU" in config_pbtxt("policy", "tiny", device="cuda")
    monkeypatch.setenv("CAI_DEVICE", "cuda")
    render_repository(tmp_path, ModelSettings(model="tiny"), cache_dir, roles=("policy",))
    assert "count: 1 kind: KIND_GPU" in (tmp_path / "policy" / "config.pbtxt").read_text()
