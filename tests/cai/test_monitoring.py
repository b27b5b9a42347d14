"""The loop watched live: a worker, a trainer and `cai dashboard` on the real stack (Kafka,
Redis, Triton with tiny models), as child processes on free ports.

* every /metrics endpoint (worker, trainer, Triton) passes `promtool check metrics` (Triton's
  own nv_* names excepted, see below), and a real Prometheus, run from Debian's package with
  deploy/prometheus/prometheus.yml pointed at them, reports every target up and answers every
  query of the Grafana dashboard;
* in headless Chromium the dashboard shows a new prompt within 2 seconds of the topic, its
  numbers move as prompts flow, and a click on a prompt id opens its whole lineage, down to the
  policy version that trained on it. A screenshot is taken (set CAI_DASHBOARD_SCREENSHOT to a
  path to keep it and the lineage page's beside it, as docs/dashboard.png was made).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from agents.feed import publish
from scoring import prompt_sets, splits
from stack.processes import free_port
from streams.admin import ensure_topics
from streams.settings import StreamSettings
from tests.cai.conftest import get, get_json
from tests.cai.test_dashboard_browser import wait_until
from tests.cai.test_grafana import DEPLOY, queries, referenced_metrics
from tests.conftest import poll_until, service_unavailable, stack_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
UPDATE_WITHIN_S = 2.0


@dataclass
class LiveRun:
    stream: StreamSettings
    env: dict
    dashboard: str             # base URL
    metrics: dict[str, str]    # job -> host:port of its /metrics
    trainer_dir: Path
    report: Path
    logs: list[Path]
    run: str

    def feed(self, harmful: int, benign: int, start: int = 0) -> list[str]:
        """Publish training-split prompts (ids unique to this run); returns their ids."""
        chosen = []
        for name, count in (("harmbench", harmful), ("benign", benign)):
            items = splits.train_part(prompt_sets.builtin(name, f"{self.run}-"))
            chosen += items[start:start + count]
        publish(chosen, self.stream, progress=False)
        return [p.prompt_id for p in chosen]

    def snapshot(self) -> dict:
        return get_json(self.dashboard + "/api/snapshot")

    def wait(self, predicate, timeout: float, what: str) -> None:
        poll_until(predicate, timeout, what, self.logs)


def _start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("ab") as handle:
        return subprocess.Popen([sys.executable, "-m", "cai", *argv], cwd=ROOT, env=env,
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def _answers(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def live_run(live_stack, tmp_path_factory):
    """Worker, trainer and dashboard on the live stack; 12 prompts fed and trained on."""
    tmp = tmp_path_factory.mktemp("live-run")
    run = uuid.uuid4().hex[:8]
    stream = StreamSettings(kafka_bootstrap=live_stack.kafka_address, topic_prefix=f"dash{run}.",
                            app_id=f"cai-dash-{run}", partitions=2)
    ensure_topics(stream)
    ports = {name: free_port() for name in ("worker", "trainer", "dashboard")}
    env = stack_env(live_stack, CAI_TOPIC_PREFIX=stream.topic_prefix, CAI_APP_ID=stream.app_id,
                    CAI_PARTITIONS="2", CAI_MODEL="tiny",
                    CAI_PIPELINE_REDIS_URL=live_stack.redis_address,
                    CAI_PIPELINE_TRITON_GRPC=live_stack.triton_grpc,
                    CAI_PIPELINE_BATCH_SIZE="4", CAI_PIPELINE_BATCH_WITHIN_S="0.2",
                    CAI_PIPELINE_POLICY_MAX_NEW_TOKENS="12",
                    CAI_PIPELINE_CRITIQUE_MAX_NEW_TOKENS="12",
                    CAI_PIPELINE_REVISION_MAX_NEW_TOKENS="12",
                    CAI_PIPELINE_DATA_DIR=str(tmp / "faust"))
    trainer_dir, report = tmp / "trainer", tmp / "report.json"
    logs = [tmp / f"{name}.log" for name in ("worker", "trainer", "dashboard")]
    procs = [
        _start(["worker", "--worker-id", f"dash-{run}", "--metrics-port", str(ports["worker"])],
               env, logs[0]),
        _start(["trainer", "--trainer-dir", str(trainer_dir), "--model", "tiny",
                "--metrics-port", str(ports["trainer"]), "--round-every-examples", "4",
                "--round-every-seconds", "20", "--probe-size", "1", "--max-length", "96",
                "--batch-size", "4", "--promotion-threshold", "10", "--max-staleness", "1000",
                # a random tiny model cannot pass the dev gate; the probe loss decides
                "--no-gate"],
               env, logs[1]),
        _start(["dashboard", "--port", str(ports["dashboard"]), "--trainer-dir",
                str(trainer_dir), "--report", str(report)], env, logs[2]),
    ]
    live = LiveRun(stream, env, f"http://127.0.0.1:{ports['dashboard']}",
                   {"worker": f"127.0.0.1:{ports['worker']}",
                    "trainer": f"127.0.0.1:{ports['trainer']}",
                    "triton": live_stack.triton_metrics}, trainer_dir, report, logs, run)
    try:
        live.wait(lambda: all(_answers(f"http://{address}/metrics")
                              for address in live.metrics.values())
                  and _answers(live.dashboard + "/healthz"), 180, "metrics and dashboard")
        fed = live.feed(harmful=8, benign=4)
        live.wait(lambda: live.snapshot()["topics"]["sft"]["total"] >= len(fed), 600,
                  "every fed prompt to reach sft")
        live.wait(lambda: live.snapshot()["rounds_total"] >= 1
                  and "cai_trainer_rounds_total{" in _scrape(live.metrics["trainer"]), 600,
                  "a finished trainer round")
        yield live
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        _forget_rounds(live_stack)


def _forget_rounds(stack) -> None:
    """Drop this trainer's rounds from the stack's shared round history."""
    import redis

    from trainer.publisher import REDIS_LAST_ROUND_KEY, REDIS_ROUNDS_KEY

    redis.Redis.from_url(stack.redis_address).delete(REDIS_LAST_ROUND_KEY, REDIS_ROUNDS_KEY)


def _scrape(address: str) -> str:
    status, body = get(f"http://{address}/metrics")
    assert status == 200
    return body


def _promtool(text: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        service_unavailable("promtool missing; run `cai setup --test-tools`")
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, check=False)


def test_every_metrics_endpoint_passes_promtool(live_run):
    worker, trainer = _scrape(live_run.metrics["worker"]), _scrape(live_run.metrics["trainer"])
    for job, text in (("worker", worker), ("trainer", trainer)):
        result = _promtool(text)
        assert result.returncode == 0, f"{job}: {result.stdout}{result.stderr}"
    assert 'cai_stage_records_total{event="out",stage="policy"}' in worker
    assert 'cai_triton_request_seconds_count{role="judge"}' in worker
    assert 'cai_trainer_rounds_total{outcome="' in trainer
    # Triton's exposition parses; promtool's only findings are NVIDIA's own fixed names
    # (nv_* counters without _total, durations in microseconds), which no setting changes.
    result = _promtool(_scrape(live_run.metrics["triton"]))
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode in (0, 3), result.stdout + result.stderr  # 3: lint findings only
    assert all(line.startswith("nv_") for line in problems), problems


def _exposed(texts: list[str]) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    names = set()
    for text in texts:
        for family in text_string_to_metric_families(text):
            names.add(family.name)
            names |= {f"{family.name}{s}" for s in ("_total", "_bucket", "_sum", "_count")}
            names |= {sample.name for sample in family.samples}
    return names


def _local_config(path: Path, targets: dict[str, str]) -> Path:
    """deploy/prometheus/prometheus.yml with each job's targets replaced by local addresses."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        for key in [k for k in job if k.endswith("_sd_configs")]:
            del job[key]
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    config["global"]["scrape_interval"] = "1s"
    path.write_text(yaml.safe_dump(config))
    return path


def test_prometheus_scrapes_every_target_up_and_answers_every_grafana_query(live_run, tmp_path):
    if shutil.which("prometheus") is None:
        service_unavailable("prometheus missing; run `cai setup --test-tools`")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "prometheus.log"
    config = _local_config(tmp_path / "prometheus.yml", live_run.metrics)
    with log.open("wb") as handle:
        proc = subprocess.Popen(["prometheus", f"--config.file={config}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def targets() -> list[dict]:
            try:
                return get_json(base + "/api/v1/targets")["data"]["activeTargets"]
            except (OSError, AssertionError, ValueError):
                return []

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            active = targets()
            if len(active) == 3 and all(t["health"] == "up" for t in active):
                break
            time.sleep(1)
        else:
            raise AssertionError(f"targets not all up: {targets()}\n{log.read_text()[-3000:]}")
        assert {t["labels"]["job"] for t in active} == {"triton", "worker", "trainer"}
        time.sleep(3)  # a few scrapes, so that rate() has two points
        for title, expr in queries():
            answer = get_json(base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
            assert answer["status"] == "success", (title, expr, answer)
        up = get_json(base + "/api/v1/query?" + urllib.parse.urlencode({"query": "up"}))
        assert sorted(float(r["value"][1]) for r in up["data"]["result"]) == [1.0, 1.0, 1.0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    exposed = _exposed([_scrape(address) for address in live_run.metrics.values()])
    for title, expr in queries():
        missing = referenced_metrics(expr) - exposed
        assert not missing, f"{title}: {sorted(missing)} not on any live /metrics endpoint"


def _send_raw(stream: StreamSettings, value: bytes) -> None:
    from kafka import KafkaProducer

    from streams import topics

    producer = KafkaProducer(bootstrap_servers=stream.kafka_address, acks="all")
    producer.send(topics.topic_name(topics.PROMPTS, stream), key=b"bad", value=value).get(30)
    producer.close()


def _text(browser, selector: str) -> str:
    return browser.find_element("css selector", selector).text


def _write_report(live: LiveRun) -> None:
    """A `cai run` report with the held-out figures of v1 and the serving version, measured
    now on a few held-out prompts."""
    import json

    from core.settings import ModelSettings, StackSettings
    from scoring import evaluate
    from serving.repository import policy_source

    stack = StackSettings(state_dir=Path(live.env["CAI_STATE_DIR"]),
                          cache_dir=Path(live.env["CAI_CACHE_DIR"]))
    harmful = [p.prompt for p in splits.held_out_part(prompt_sets.builtin("harmbench"))][:8]
    benign = [p.prompt for p in splits.held_out_part(prompt_sets.builtin("benign"))][:4]
    serving = live.snapshot()["serving_policy_version"] or 1
    models = ModelSettings(model="tiny")
    policies = {f"v{v}": evaluate.evaluate_policy(policy_source(stack, models, v), harmful,
                                                  benign, max_new_tokens=16)
                for v in sorted({1, serving})}
    for figures in policies.values():
        figures.pop("answers", None)
    live.report.write_text(json.dumps({"policies": policies}))


def test_the_dashboard_follows_the_live_run_in_a_browser(browser, live_run, tmp_path):
    browser.get(live_run.dashboard + "/")
    wait_until(browser, "return window.caiDashboard && window.caiDashboard.received > 0")
    wait_until(browser, "return document.querySelector('#topics tr[data-topic=\"sft\"]')")
    # a cell reads "-" until its first figure arrives (the stage counters come from Redis)
    for selector in ('#topics tr[data-topic="prompts"] .total',
                     '#topics tr[data-topic="sft"] .total',
                     '#counters tr[data-stage="policy"] td:nth-child(2)'):
        wait_until(browser, f"return /^[0-9]+$/.test(document.querySelector({selector!r})"
                            ".textContent.trim())", timeout=30)
    prompts_total = int(_text(browser, '#topics tr[data-topic="prompts"] .total'))
    sft_total = int(_text(browser, '#topics tr[data-topic="sft"] .total'))
    policy_in = int(_text(browser, '#counters tr[data-stage="policy"] td:nth-child(2)'))

    # A new prompt shows within 2 s of the broker's acknowledgement.
    [first] = live_run.feed(harmful=1, benign=0, start=8)
    acked = time.monotonic()
    wait_until(browser, "return Number(document.querySelector("
                        f"'#topics tr[data-topic=\"prompts\"] .total').textContent) > "
                        f"{prompts_total}", timeout=10)
    latency = time.monotonic() - acked
    print(f"\ndashboard showed the new prompt {latency:.2f}s after the broker's ack")
    assert latency < UPDATE_WITHIN_S

    # The numbers move as the prompts flow through the stages; a malformed message shows in the
    # dead-letter browser with its reason and payload.
    more = live_run.feed(harmful=2, benign=2, start=9)
    _send_raw(live_run.stream, b"{this is not json")
    wait_until(browser, "return Number(document.querySelector("
                        f"'#topics tr[data-topic=\"sft\"] .total').textContent) >= "
                        f"{sft_total + 1 + len(more)}", timeout=600)
    assert int(_text(browser, '#counters tr[data-stage="policy"] td:nth-child(2)')) > policy_in
    assert _text(browser, '#latency tr[data-stage="end_to_end"]').split()[1] != "-"
    assert browser.find_elements("css selector", "#rounds tbody tr")
    assert int(_text(browser, "#serving-version")) >= 1
    wait_until(browser, "return document.querySelector('#dead tr.dead-row')", timeout=60)
    row = browser.find_element("css selector", "#dead tr.dead-row")
    assert "policy" in row.text and "not JSON" in row.text
    row.click()
    assert "{this is not json" in _text(browser, "#dead tr.payload pre")

    # The held-out figures of a report join the learning curve.
    _write_report(live_run)
    wait_until(browser, "return window.caiDashboard.charts['curve-harmless'].data.datasets.some("
                        "d => d.label === 'held-out (report)' && d.data.some(v => v != null))",
               timeout=30)

    # Lineage: a prompt of the first batch that a promoted round trained on.
    def trained_prompt() -> str | None:
        for row in live_run.snapshot()["examples"]:
            if row["kind"] != "harmful":
                continue
            chain = get_json(live_run.dashboard + "/api/lineage/" + row["prompt_id"])
            if any(use["promoted"] and use.get("version") for use in chain["training"]):
                return row["prompt_id"]
        return None

    live_run.wait(lambda: trained_prompt() is not None, 600, "a promoted round over a prompt")
    prompt_id = trained_prompt()
    link = f'#examples a[href="/lineage/{prompt_id}"]'
    wait_until(browser, f"return document.querySelector('{link}')")
    shot = tmp_path / "dashboard.png"
    browser.execute_script("window.scrollTo(0, 0)")
    time.sleep(1)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("CAI_DASHBOARD_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["CAI_DASHBOARD_SCREENSHOT"])

    browser.find_element("css selector", link).click()
    wait_until(browser, "return document.querySelector('#lineage')")
    assert _text(browser, "#prompt h2").startswith("prompt")
    assert browser.find_element("css selector", "#answer-0 .text").text.strip()
    critiques = browser.find_elements("css selector", ".step.critique")
    revisions = browser.find_elements("css selector", ".step.revision")
    assert len(critiques) == len(revisions) == 2  # two rounds (CAI_PIPELINE_ROUNDS default)
    assert browser.find_elements("css selector", ".step.pair")
    assert 0.0 <= float(_text(browser, "#label .p-chosen")) <= 1.0
    assert "policy v" in _text(browser, "#training .trained-version")
    if os.environ.get("CAI_DASHBOARD_SCREENSHOT"):
        kept = Path(os.environ["CAI_DASHBOARD_SCREENSHOT"])
        size = browser.get_window_size()
        browser.set_window_size(size["width"], 1300)  # the lineage page is shorter
        browser.save_screenshot(str(kept.with_name(f"{kept.stem}-lineage{kept.suffix}")))
        browser.set_window_size(size["width"], size["height"])
    assert first  # the prompt fed above has a lineage too
    assert get(live_run.dashboard + "/lineage/" + first)[0] == 200
