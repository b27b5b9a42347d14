"""`cai run` end to end on tiny models: its own stack, the worker and the trainer, several rounds
of fresh prompts, each trained once the pipeline has drained, and the report with a row and a
curve point per served version."""

from __future__ import annotations

import json

import pytest

from cai import run
from tests.conftest import fresh_stack_settings

pytestmark = pytest.mark.integration


def test_cai_run_trains_rounds_of_fresh_prompts_and_reports_every_served_version(
        tmp_path, monkeypatch):
    settings = fresh_stack_settings(tmp_path / "state")
    for name in ("CAI_KAFKA_BOOTSTRAP", "CAI_REDIS_URL", "CAI_TRITON_HTTP_URL",
                 "CAI_TRITON_GRPC_URL"):
        monkeypatch.delenv(name, raising=False)
    # One round at least, a second because the time allows it (--more-rounds-within).
    options = run.RunOptions(
        model="tiny", rounds=1, max_rounds=2, more_rounds_within=10, prompts=4, eval_harmful=3,
        eval_benign=2, eval_max_new_tokens=4, duration=12,
        report=tmp_path / "report" / "run.json",
        # The tiny random model never passes the dev gate: this test is about the loop.
        trainer_overrides={"gate": False, "max_length": 64, "nice": 0})
    try:
        report = run.run(settings, options)
    except Exception:
        for log in (settings.logs_dir).glob("*.log"):
            print(log.name, log.read_text(errors="replace")[-3000:])
        raise
    assert report["pipeline_done"] is True
    assert (report["rounds"], report["max_rounds"]) == (2, 2)
    assert report["roles"] == ["policy"]  # the default recipe calls the policy only
    rounds = report["trainer_rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["promoted"] for r in rounds)
    assert [r["version"] for r in rounds] == [2, 3]
    # Each round's examples came from the prompts fed for it, answered by the version serving.
    for number, summary in enumerate(rounds, 1):
        folder = settings.state_dir / "trainer" / "rounds" / f"round-{number:06d}"
        examples = json.loads((folder / "examples.json").read_text())
        versions = {e["policy_version"] for e in examples["sft"] + examples["preferences"]}
        assert versions == {number}, (number, versions)
    assert list(report["policies"]) == ["v1", "v2", "v3"]
    # Each version was evaluated by its own child process (cai/evaluations.py).
    evaluated = settings.state_dir / "evaluations"
    assert sorted(p.name for p in evaluated.glob("v*.json")) == ["v1.json", "v2.json", "v3.json"]
    for figures in report["policies"].values():
        assert figures["harmless"]["n"] == 3 and figures["over_refusal"]["n"] == 2
        assert "declined_then_complied" in figures
    written = json.loads(options.report.read_text())
    assert written["plot"] == "run-curve.png"
    assert (options.report.parent / "run-curve.png").read_bytes()[:4] == b"\x89PNG"
    markdown = options.report.with_suffix(".md").read_text()
    assert "| v3 |" in markdown and "round 2 promoted as policy v3" in markdown
    assert "classifier_accuracy" in written


def test_cai_run_recipe_rl_serves_a_reward_model_and_streams_its_samples(tmp_path, monkeypatch):
    """`cai run --recipe rl` live: Triton loads the reward role, the trainer's preference model
    is published as reward v2, the serving policy's samples and rewards reach the rl-samples
    topic, and the RL round is published as policy v2."""
    import redis

    from serving.publish import version_key
    from streams.settings import StreamSettings
    from streams.topic_stats import TopicReader
    from streams.topics import RL_SAMPLES, topic_name

    settings = fresh_stack_settings(tmp_path / "state")
    for name in ("CAI_KAFKA_BOOTSTRAP", "CAI_REDIS_URL", "CAI_TRITON_HTTP_URL",
                 "CAI_TRITON_GRPC_URL"):
        monkeypatch.delenv(name, raising=False)
    options = run.RunOptions(
        model="tiny", recipe="rl", rounds=1, max_rounds=1, prompts=4, eval_harmful=2,
        eval_benign=2, eval_max_new_tokens=4, duration=12,
        report=tmp_path / "report" / "run.json", keep=True,
        trainer_overrides={"gate": False, "max_length": 64, "nice": 0, "epochs": 1,
                           "rl_epochs": 1, "rl_samples": 2, "rl_max_new_tokens": 8,
                           # the tiny preference model's held-out accuracy is noise: keep it
                           "promotion_threshold": 1.0})
    try:
        report = run.run(settings, options)
        assert report["roles"] == ["policy", "reward"]
        (summary,) = report["trainer_rounds"]
        assert summary["promoted"] and summary["version"] == 2
        metrics = summary["metrics"]
        folder = settings.state_dir / "trainer" / "rounds" / "round-000001"
        examples = json.loads((folder / "examples.json").read_text())
        prompts = {e["prompt_id"] for e in examples["sft"] + examples["preferences"]}
        # k=2 answers to every prompt the round trained on (the tiny model's gibberish loses
        # some prompts' targets, so not always all 4 fed).
        assert prompts and metrics["rl/samples"] == 2 * len(prompts)
        assert metrics["reward/version"] == 2
        assert redis.Redis.from_url(settings.redis_address).get(version_key("reward")) == b"2"
        topic = topic_name(RL_SAMPLES, StreamSettings(kafka_bootstrap=settings.kafka_address))
        samples = TopicReader(settings.kafka_address).tail(topic, 20)
        assert len(samples) == 2 * len(prompts)
        assert {s["prompt_id"] for s in samples} == prompts
        assert {(s["policy_version"], s["reward_version"]) for s in samples} == {(1, 2)}
        assert "reward model v2" in options.report.with_suffix(".md").read_text()
    except Exception:
        for log in (settings.logs_dir).glob("*.log"):
            print(log.name, log.read_text(errors="replace")[-3000:])
        raise
    finally:
        from stack import children, services

        children.stop(settings)
        services.down(settings)
