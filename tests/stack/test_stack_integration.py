"""The real services: Kafka consumer groups with committed offsets, Redis, Triton."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from serving import triton_server
from stack import services as stack
from stack.processes import pid_alive
from tests.conftest import fresh_stack_settings

pytestmark = pytest.mark.integration


def test_kafka_consumer_group_commits_offsets(kafka_redis):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"test-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_redis.kafka_address)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()

    producer = KafkaProducer(bootstrap_servers=kafka_redis.kafka_address)
    for i in range(10):
        producer.send(topic, key=str(i).encode(), value=json.dumps({"n": i}).encode())
    producer.flush()
    producer.close()

    def consume(expected: int) -> list[int]:
        consumer = KafkaConsumer(
            topic, bootstrap_servers=kafka_redis.kafka_address, group_id="g1",
            enable_auto_commit=False, auto_offset_reset="earliest", consumer_timeout_ms=8000,
        )
        seen = []
        for message in consumer:
            seen.append(json.loads(message.value)["n"])
            if len(seen) == expected:
                break
        consumer.commit()
        consumer.close()
        return seen

    assert sorted(consume(10)) == list(range(10))
    # The group's committed offsets cover everything: a new member of the group sees nothing.
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_redis.kafka_address, group_id="g1", enable_auto_commit=False,
    )
    committed = sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in (0, 1))
    consumer.close()
    assert committed == 10
    assert consume(1) == []


def test_redis_read_write(kafka_redis):
    import redis

    client = redis.Redis.from_url(kafka_redis.redis_address)
    client.set("cai:test:key", "v1")
    assert client.get("cai:test:key") == b"v1"
    assert client.set("cai:test:key", "v2", nx=True) is None  # idempotency primitive
    client.delete("cai:test:key")


IDENTITY_MODEL = textwrap.dedent('''
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            out = []
            for request in requests:
                data = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", data * 2)]))
            return out
''')

IDENTITY_CONFIG = textwrap.dedent('''
    name: "double"
    backend: "python"
    max_batch_size: 8
    input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 2 ] } ]
    output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 2 ] } ]
    instance_group [ { kind: KIND_CPU count: 1 } ]
''')


def test_triton_serves_a_python_model(tmp_path):
    import numpy as np
    import tritonclient.http as httpclient

    settings = fresh_stack_settings(tmp_path)
    model_dir = settings.triton_repository / "double"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(IDENTITY_CONFIG)
    (model_dir / "1" / "model.py").write_text(IDENTITY_MODEL)
    try:
        stack.up(settings, None, services=("triton",))
    except Exception as exc:  # noqa: BLE001 - reported through the CI-aware helper
        from tests.conftest import service_unavailable

        service_unavailable(f"triton: {exc}")
    try:
        client = httpclient.InferenceServerClient(settings.triton_http)
        assert client.is_model_ready("double")
        inp = httpclient.InferInput("INPUT", [1, 2], "FP32")
        inp.set_data_from_numpy(np.array([[1.5, -2.0]], dtype=np.float32))
        result = client.infer("double", [inp]).as_numpy("OUTPUT")
        assert result.tolist() == [[3.0, -4.0]]
        with urllib.request.urlopen(f"http://{settings.triton_metrics}/metrics", timeout=5) as r:
            assert b"nv_inference_request_success" in r.read()
    finally:
        stack.down(settings, services=("triton",))


def test_cli_stack_up_status_down_leaves_no_process(tmp_path):
    settings = fresh_stack_settings(tmp_path / "state")
    env = dict(os.environ)
    env.update({
        "CAI_STATE_DIR": str(settings.state_dir),
        "CAI_KAFKA_PORT": str(settings.kafka_port),
        "CAI_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
        "CAI_REDIS_PORT": str(settings.redis_port),
        "CAI_TRITON_HTTP_PORT": str(settings.triton_http_port),
        "CAI_TRITON_GRPC_PORT": str(settings.triton_grpc_port),
        "CAI_TRITON_METRICS_PORT": str(settings.triton_metrics_port),
    })
    for key in ("CAI_KAFKA_BOOTSTRAP", "CAI_REDIS_URL", "CAI_TRITON_HTTP_URL",
                "CAI_TRITON_GRPC_URL"):
        env.pop(key, None)
    cai = [sys.executable, "-m", "cai"]

    def call(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cai, *argv], env=env, capture_output=True, text=True, check=False)

    up = call("stack", "up", "--no-models")
    if up.returncode != 0:
        from tests.conftest import service_unavailable

        call("stack", "down")
        service_unavailable(f"cai stack up failed: {up.stderr[-1500:]}")
    try:
        status = call("stack", "status", "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["triton"]["http"] == f"http://{settings.triton_http}"
        pids = {name: data[name]["pid"] for name in ("kafka", "redis", "triton")}
        assert all(data[name]["healthy"] for name in pids)
        # The broker is a real Apache Kafka JVM.
        cmdline = Path(f"/proc/{pids['kafka']}/cmdline").read_bytes().split(b"\0")
        assert b"kafka.Kafka" in cmdline and any(b"java" in part for part in cmdline)
    finally:
        down = call("stack", "down")
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids.values()):
        time.sleep(0.2)
    assert not any(pid_alive(pid) for pid in pids.values())
    after = call("stack", "status")
    assert after.returncode == 1 and "DOWN" in after.stdout


def test_triton_binary_present():
    assert triton_server.binary().exists()
