"""docker-compose.yml and the images, read as files (the running system: tests/compose/)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from core.settings import KAFKA_VERSION

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
CORE = ("kafka", "redis", "triton", "worker", "trainer")
PROJECT = ("triton", "worker", "trainer", "feed", "monitor")


def test_services_and_profiles():
    assert set(CORE) <= set(SERVICES)
    assert all("profiles" not in SERVICES[name] for name in CORE)
    assert SERVICES["feed"]["profiles"] == ["feed"]
    assert SERVICES["monitor"]["profiles"] == ["monitor"]
    for name in ("prometheus", "grafana", "kafka-ui"):
        assert SERVICES[name]["profiles"] == ["monitoring"], name


def test_kafka_is_the_pinned_apache_release_in_kraft_mode_with_its_data_on_the_volume():
    kafka = SERVICES["kafka"]
    assert kafka["image"] == f"${{CAI_KAFKA_IMAGE:-apache/kafka:{KAFKA_VERSION}}}"
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert not any("ZOOKEEPER" in key for key in env)
    mount = kafka["volumes"][0].split(":")
    assert mount[0] == "kafka-data" and env["KAFKA_LOG_DIRS"] == mount[1]


def test_kafka_version_matches_the_local_pom():
    pom = (ROOT / "stack" / "kafka" / "pom.xml").read_text()
    assert re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1) == KAFKA_VERSION


def test_every_kafka_client_listener_needs_sasl_and_the_host_one_is_advertised():
    env = SERVICES["kafka"]["environment"]
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
                     .split(","))
    listeners = [item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")]
    for name in listeners:
        if name != env["KAFKA_CONTROLLER_LISTENER_NAMES"]:
            assert protocols[name].startswith("SASL_"), name
            assert f"KAFKA_LISTENER_NAME_{name}_PLAIN_SASL_JAAS_CONFIG" in env
    assert "HOST://127.0.0.1:${CAI_COMPOSE_KAFKA_PORT:-9094}" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert SERVICES["kafka"]["ports"] == ["127.0.0.1:${CAI_COMPOSE_KAFKA_PORT:-9094}:9094"]


def test_published_ports_bind_to_loopback_and_triton_is_not_published():
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    for name in ("triton", "worker", "trainer", "feed", "monitor"):
        assert "ports" not in SERVICES[name], name  # model control; `--scale worker=N`


def test_passwords_come_from_the_environment_and_are_required():
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${CAI_REDIS_PASSWORD:?" in SERVICES["redis"]["environment"]["CAI_REDIS_PASSWORD"]
    assert "requirepass" in " ".join(SERVICES["redis"]["command"])
    env = SERVICES["worker"]["environment"]
    assert env["CAI_REDIS_URL"].startswith("redis://:${CAI_REDIS_PASSWORD:?")
    assert env["CAI_KAFKA_SASL_PASSWORD"].startswith("${CAI_KAFKA_SASL_PASSWORD:?")
    assert not re.search(r"PASSWORD:-[^}]", text), "no default password"
    example = (ROOT / ".env.example").read_text()
    for name in ("CAI_KAFKA_SASL_PASSWORD", "CAI_REDIS_PASSWORD", "CAI_MONITORING_PASSWORD"):
        assert f"\n{name}=\n" in example, name


def test_healthchecks_probe_what_each_service_serves():
    from agents.settings import PipelineSettings

    probe = {name: " ".join(SERVICES[name]["healthcheck"]["test"]) for name in CORE}
    assert "kafka-broker-api-versions.sh" in probe["kafka"] and "sasl" in probe["kafka"]
    assert "redis-cli ping" in probe["redis"] and "REDISCLI_AUTH" in probe["redis"]
    assert "/v2/health/ready" in probe["triton"]
    port = PipelineSettings.model_fields["metrics_port"].default
    assert f"CAI_PIPELINE_METRICS_PORT', '{port}'" in probe["worker"] and "/metrics" in probe[
        "worker"]
    assert "CAI_TRAINER_METRICS_PORT', '9102'" in probe["trainer"]


def test_long_running_services_restart_and_one_shots_do_not():
    for name in CORE:
        assert SERVICES[name]["restart"] == "unless-stopped", name
    assert SERVICES["feed"]["restart"] == SERVICES["monitor"]["restart"] == "no"


def test_dependents_wait_for_healthy_services_and_get_addresses_by_env():
    for name in ("worker", "trainer"):
        svc = SERVICES[name]
        assert all(cond == {"condition": "service_healthy"} for cond in svc["depends_on"].values())
        assert set(svc["depends_on"]) == {"kafka", "redis", "triton"}
        env = svc["environment"]
        assert env["CAI_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["CAI_REDIS_URL"].endswith("@redis:6379/0")
        assert env["CAI_TRITON_GRPC_URL"] == "triton:8001"


def test_the_trainer_and_the_worker_take_the_recipe_of_cai_run_by_name():
    from cai.run import RunOptions, trainer_config
    from core.recipes import DEFAULT_RECIPE
    from trainer.cli import build_config

    default = f"${{CAI_RECIPE:-{DEFAULT_RECIPE}}}"
    assert SERVICES["trainer"]["command"] == ["trainer", "--recipe", default]
    assert SERVICES["worker"]["command"] == ["worker", "--recipe", default]
    assert build_config(None, {}, DEFAULT_RECIPE) == trainer_config(RunOptions())


def test_one_project_image_with_its_base_as_a_build_argument():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm\nFROM ${BASE_IMAGE}" in dockerfile
    images = {SERVICES[name]["image"] for name in PROJECT}
    assert images == {"${CAI_IMAGE:-continuous-cai:latest}"}
    for name in PROJECT:
        build = SERVICES[name]["build"]
        assert build["context"] == "."
        assert build["args"]["BASE_IMAGE"] == "${CAI_BASE_IMAGE:-python:3.11-slim-bookworm}"
    # Triton is the nvidia-pytriton wheel's server, as in the local stack.
    assert SERVICES["triton"]["command"][:2] == ["repository", "serve"]
    assert '"nvidia-pytriton==0.7.0"' in (ROOT / "pyproject.toml").read_text()


def test_images_run_as_non_root():
    assert re.search(r"^USER cai$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert SERVICES["redis"]["user"] == "redis"
    for name in ("kafka.Dockerfile", "redis.Dockerfile"):
        assert re.search(r"^USER (appuser|redis)$",
                         (ROOT / "deploy" / "local" / name).read_text(), re.MULTILINE)


def test_the_image_copies_every_package_of_the_distribution():
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert {name.rstrip("*") for name in include} == packages
    text = (ROOT / "Dockerfile").read_text()
    assert set(re.findall(r"^COPY (\w+) \./\1$", text, re.MULTILINE)) == packages


def test_the_gpu_blocks_are_there_to_uncomment():
    text = (ROOT / "docker-compose.yml").read_text()
    block = "    # deploy:\n    #   resources:\n    #     reservations:\n    #       devices: " \
            "[{driver: nvidia, count: 1, capabilities: [gpu]}]"
    assert text.count(block) == 2
    assert SERVICES["triton"]["environment"]["CAI_DEVICE"] == "${CAI_DEVICE:-auto}"
    uncommented = yaml.safe_load(text.replace(block, block.replace("    # ", "    ")))
    for name in ("triton", "trainer"):
        devices = uncommented["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
