"""The settings every package shares: Kafka SASL credentials, the device, metrics."""

from __future__ import annotations

import urllib.request

import pytest
from pydantic import ValidationError

from core.metrics import serve as serve_metrics
from core.settings import KafkaAuth, kafka_client_options, resolve_device
from stack.processes import free_port


def test_without_credentials_the_kafka_clients_are_unchanged(monkeypatch):
    monkeypatch.delenv("CAI_KAFKA_SASL_USERNAME", raising=False)
    assert kafka_client_options() == {}
    assert not KafkaAuth().enabled


def test_sasl_credentials_from_the_environment(monkeypatch):
    monkeypatch.setenv("CAI_KAFKA_SASL_USERNAME", "cai")
    monkeypatch.setenv("CAI_KAFKA_SASL_PASSWORD", "s3cret")
    assert kafka_client_options() == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "cai", "sasl_plain_password": "s3cret"}
    assert "s3cret" not in repr(KafkaAuth())
    monkeypatch.setenv("CAI_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    assert kafka_client_options()["sasl_mechanism"] == "SCRAM-SHA-256"


def test_a_user_without_a_password_is_refused(monkeypatch):
    monkeypatch.delenv("CAI_KAFKA_SASL_PASSWORD", raising=False)
    with pytest.raises(ValidationError, match="CAI_KAFKA_SASL_PASSWORD"):
        KafkaAuth(username="cai")


def test_the_faust_app_gets_the_credentials(monkeypatch):
    from agents.app import _credentials

    monkeypatch.delenv("CAI_KAFKA_SASL_USERNAME", raising=False)
    assert _credentials() is None
    monkeypatch.setenv("CAI_KAFKA_SASL_USERNAME", "cai")
    monkeypatch.setenv("CAI_KAFKA_SASL_PASSWORD", "s3cret")
    credentials = _credentials()
    assert (credentials.username, credentials.password) == ("cai", "s3cret")


def test_devices():
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda") == "cuda"
    assert resolve_device("auto") in {"cpu", "cuda"}
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


def test_metrics_are_served_and_a_busy_port_is_not_fatal():
    port = free_port()
    assert serve_metrics(port, "test") == port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert b"process_cpu_seconds_total" in response.read() or response.status == 200
    other = serve_metrics(port, "test")  # in use: another port, not an error
    assert other and other != port
    assert serve_metrics(0, "test") is None
