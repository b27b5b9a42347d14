"""The monitoring files that compose mounts (deploy/): Grafana's provisioning and dashboard JSON
load and hang together, every panel queries metrics that this project's processes (or Triton)
expose, and Prometheus accepts its scrape config."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

from tests.conftest import service_unavailable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = json.loads((DEPLOY / "grafana" / "dashboards" / "cai.json").read_text())
PANEL_TYPES = {"row", "timeseries", "stat", "table", "bargauge", "gauge"}
# Triton 2.51's own metrics that the dashboard uses (checked against a live Triton in
# test_monitoring.py, which also checks every other name against the live endpoints).
TRITON_METRICS = {"nv_inference_request_success", "nv_inference_request_failure",
                  "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "le", "inf", "nan", "e"}


def referenced_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions,
    aggregation modifiers with their label lists, label matchers or durations."""
    expr = re.sub(r"\{[^}]*\}", "", expr)                 # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                # range durations
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word, rest = match.group(), expr[match.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if match.start() and (expr[match.start() - 1].isdigit() or expr[match.start() - 1] == "."):
            continue  # the exponent of a number such as 1e6
        names.add(word)
    return names


def queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in DASHBOARD["panels"]
            for target in panel.get("targets", [])]


def exposed_names() -> set[str]:
    """Every sample name the worker's, the trainer's and the client's metrics can expose, and
    the Triton model's own counters (serving/triton_model.py, which only loads inside Triton)."""
    import agents.metrics  # noqa: F401 - registers the worker's metrics
    import serving.client  # noqa: F401 - registers the Triton client's metrics
    import trainer.metrics  # noqa: F401 - registers the trainer's metrics

    names = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                    "gauge": ("",)}.get(family.type, ("",))
        names |= {family.name + s for s in suffixes}
    tree = ast.parse((ROOT / "serving" / "triton_model.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_COUNTERS"
                                                for t in node.targets):
            names |= set(ast.literal_eval(node.value))
    return names


def test_the_dashboard_json_has_grafanas_structure():
    assert DASHBOARD["uid"] and DASHBOARD["title"] and DASHBOARD["schemaVersion"] >= 36
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    for panel in DASHBOARD["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "xywh") and grid["x"] + grid["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_every_panel_reads_metrics_that_exist():
    known = exposed_names() | TRITON_METRICS
    used = set()
    for title, expr in queries():
        names = referenced_metrics(expr)
        assert names, f"{title}: no metric in {expr!r}"
        missing = names - known
        assert not missing, f"{title}: {sorted(missing)} not exposed by any process"
        used |= names
    # Each metric family of the worker and the trainer has a panel.
    for family in ("cai_stage_records_total", "cai_stage_batch_seconds_bucket",
                   "cai_stage_claims_in_flight", "cai_triton_request_seconds_bucket",
                   "cai_trainer_rounds_total", "cai_trainer_round_duration_seconds_sum",
                   "cai_trainer_round_examples_sum", "cai_trainer_loss",
                   "cai_policy_serving_version", "cai_eval_share_ratio"):
        assert family in used, family


def test_metric_name_extraction():
    assert referenced_metrics(
        'histogram_quantile(0.95, sum by (le, role) (rate(cai_x_bucket{a="b"}[5m]))) / 1e6'
    ) == {"cai_x_bucket"}
    assert referenced_metrics("time() - max(cai_y)") == {"cai_y"}


def test_grafana_provisioning_points_at_the_mounted_dashboards():
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/cai.yml").read_text())["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"


def test_prometheus_scrapes_triton_the_workers_and_the_trainer():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == {"triton", "worker",
                                                                    "trainer"}
    if shutil.which("promtool") is None:
        service_unavailable("promtool missing; run `cai setup --test-tools`")
    result = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus" /
                                                                 "prometheus.yml")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
