"""docker-compose.yml structure: no Docker engine here, so check the file itself."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from core.settings import KAFKA_VERSION

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_all_parts_are_services():
    assert {"kafka", "redis", "triton", "worker", "trainer", "monitor"} <= set(SERVICES)


def test_kafka_is_the_pinned_apache_release_in_kraft_mode():
    kafka = SERVICES["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert not any("ZOOKEEPER" in key for key in env)
    assert "zookeeper" not in SERVICES


def test_kafka_version_matches_the_local_pom():
    pom = (ROOT / "stack" / "kafka" / "pom.xml").read_text()
    assert re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1) == KAFKA_VERSION


def test_ports_and_healthchecks():
    ports = {name: svc.get("ports", []) for name, svc in SERVICES.items()}
    assert "9092:9092" in ports["kafka"]
    assert "6379:6379" in ports["redis"]
    assert {"8000:8000", "8001:8001", "8002:8002"} <= set(ports["triton"])
    for name in ("kafka", "redis", "triton", "worker"):
        assert "healthcheck" in SERVICES[name], name


def test_dependents_wait_for_healthy_services_and_get_addresses_by_env():
    for name in ("worker", "trainer"):
        svc = SERVICES[name]
        assert all(cond == {"condition": "service_healthy"} for cond in svc["depends_on"].values())
        assert set(svc["depends_on"]) == {"kafka", "redis", "triton"}
        env = svc["environment"]
        assert env["CAI_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["CAI_REDIS_URL"].startswith("redis://redis:")
        assert env["CAI_TRITON_GRPC_URL"] == "triton:8001"


def test_triton_image_matches_the_local_binary_release():
    dockerfile = (ROOT / SERVICES["triton"]["build"]["dockerfile"]).read_text()
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in dockerfile
    # The trainer publishes into the repository that Triton serves: they share a volume.
    assert set(SERVICES["triton"]["volumes"]) & set(SERVICES["trainer"]["volumes"])


def test_compose_runs_the_default_recipe_of_cai_run():
    from cai.cli import build_parser
    from cai.recipes import DEFAULT_RECIPE, RECIPES, worker_env
    from core.options import given
    from trainer.config import TrainerConfig

    recipe = RECIPES[DEFAULT_RECIPE]
    env = SERVICES["worker"]["environment"]
    for name, value in worker_env(recipe.pipeline).items():
        assert env[name] == f"${{{name}:-{value}}}", name  # the recipe's value, overridable
    command = SERVICES["trainer"]["command"]
    assert command[0] == "trainer"
    assert given(TrainerConfig, build_parser().parse_args(command)) == recipe.trainer


def test_the_images_copy_every_package_of_the_distribution():
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert {name.rstrip("*") for name in include} == packages
    for dockerfile in ("Dockerfile", "serving/Dockerfile"):
        text = (ROOT / dockerfile).read_text()
        copied = set(re.findall(r"^COPY (\w+) \./\1$", text, re.MULTILINE))
        assert copied == packages, dockerfile
