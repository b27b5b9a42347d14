"""Settings validation, model selection and stack error messages (no services needed)."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from core.settings import ModelSettings, StackSettings
from stack import services as stack
from stack.processes import ServiceError


def test_role_override_beats_the_family(monkeypatch):
    monkeypatch.setenv("CAI_MODEL", "tiny")
    monkeypatch.setenv("CAI_JUDGE_MODEL", "org/bigger-judge")
    models = ModelSettings()
    assert models.for_role("policy") == "tiny"
    assert models.for_role("judge") == "org/bigger-judge"
    with pytest.raises(ValueError, match="unknown role 'teacher'"):
        models.for_role("teacher")


def test_external_addresses_replace_local_ones(monkeypatch):
    monkeypatch.setenv("CAI_KAFKA_BOOTSTRAP", "kafka:9092")
    settings = StackSettings()
    assert settings.kafka_address == "kafka:9092"
    assert stack.is_external(settings, "kafka")
    assert not stack.is_external(settings, "redis")


def test_bad_port_names_the_field():
    with pytest.raises(ValidationError, match="redis_port"):
        StackSettings(redis_port=70000)


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = StackSettings(state_dir=tmp_path, redis_port=port, redis_url=None)
        with pytest.raises(ServiceError, match=rf"redis: port {port} .* in use.*CAI_REDIS_PORT"):
            stack.up(settings, None, services=("redis",))


def test_missing_binary_is_a_clear_error(tmp_path, monkeypatch):
    from stack import redis_service

    monkeypatch.setattr(redis_service.shutil, "which", lambda name: None)
    monkeypatch.setattr(redis_service, "Path", lambda p: tmp_path / "absent")
    with pytest.raises(ServiceError, match="redis-server is not installed.*cai setup"):
        redis_service.prepare(StackSettings(state_dir=tmp_path))


def test_kafka_runs_on_a_fixed_heap_touched_at_start(monkeypatch):
    from stack import kafka

    flags = kafka.jvm_options(StackSettings())
    assert flags[:3] == ["-Xms512m", "-Xmx512m", "-XX:+AlwaysPreTouch"]
    monkeypatch.setenv("CAI_KAFKA_HEAP", "1g")
    flags = kafka.jvm_options(StackSettings())
    assert "-Xms1g" in flags and "-Xmx1g" in flags and not any(
        f.startswith(("-Xms", "-Xmx")) and f[4:] != "1g" for f in flags)
    with pytest.raises(ValidationError, match="kafka_heap"):
        StackSettings(kafka_heap="-Xmx1g")
