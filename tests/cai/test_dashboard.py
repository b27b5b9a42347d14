"""The dashboard without services: each view from records, and the web app over a stub
collector (pages, JSON, the event stream, the vendored chart library, nothing from elsewhere)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from cai import monitor
from cai.dashboard import app as dashboard_app
from cai.dashboard import server, views
from scoring.shares import Share
from tests.cai.conftest import get, get_json, served

HERE = Path(dashboard_app.__file__).parent


def share(hits: int, n: int) -> dict:
    return Share(hits, n).as_dict()


def gate(harmless: tuple[int, int], over_refusal: tuple[int, int]) -> dict:
    return {"harmless": share(*harmless), "explains_why": share(1, 4),
            "declined_then_complied": share(0, 4), "over_refusal": share(*over_refusal)}


# Round summaries as the trainer records them, with the gate's figures (the live loop's format).
ROUNDS = [
    {"round": 1, "promoted": True, "reasons": [],
     "metrics": {"loss/sft": 2.5, "data/sft_harmful": 3},
     "version_before": 1, "version": 2, "created_at": 100.0,
     "gate": {"before": gate((2, 20), (0, 10)), "after": gate((8, 20), (1, 10))}},
    {"round": 2, "promoted": False,
     "reasons": ["dev over-refusal 0.600 is above the first policy's 0.000 by more than 0.05"],
     "metrics": {"loss/sft": 2.1, "dev/over_refusal": 0.6},
     "version_before": 2, "version": None, "created_at": 200.0,
     "gate": {"before": gate((9, 20), (1, 10)), "after": gate((15, 20), (6, 10))}},
    {"round": 3, "promoted": True, "reasons": [], "metrics": {"loss/dpo": 0.69},
     "version_before": 2, "version": 3, "created_at": 300.0},  # no gate yet
]


def test_the_learning_curve_plots_each_version_from_the_gate_and_the_report():
    report = {"policies": {"v1": {"harmless": share(3, 32), "over_refusal": share(0, 16)},
                           "v3": {"harmless": share(12, 32), "over_refusal": share(1, 16),
                                  "explains_why": share(4, 12), "not a figure": 1}}}
    curve = views.learning_curve(ROUNDS, report)
    assert curve["versions"] == [1, 2, 3]
    harmless = curve["series"]["harmless"]
    # v1 from round 1's "before"; v2 from round 2's "before" (newest), not the rejected "after".
    assert [(p["version"], p["value"]) for p in harmless["dev"]] == [(1, 0.1), (2, 0.45)]
    assert harmless["dev"][0]["lo"] < 0.1 < harmless["dev"][0]["hi"]
    assert [(p["version"], p["value"]) for p in harmless["held_out"]] == [(1, 0.0938), (3, 0.375)]
    assert curve["series"]["declined_then_complied"]["held_out"] == []
    # Rounds without a gate and no report: an empty curve, not an error.
    empty = views.learning_curve([{"round": 1, "promoted": False, "reasons": [], "metrics": {}}])
    assert empty["versions"] == [] and empty["series"]["harmless"] == {"dev": [], "held_out": []}


def test_the_timeline_says_why_a_round_was_rejected_and_what_the_gate_saw():
    rows = views.timeline(ROUNDS)
    assert [r["round"] for r in rows] == [3, 2, 1]
    rejected = rows[1]
    assert not rejected["promoted"] and "dev over-refusal 0.600" in rejected["outcome"]
    assert rejected["gate"]["over_refusal"]["after"]["value"] == 0.6
    assert rows[2]["version_before"] == 1 and rows[2]["version"] == 2
    assert rows[2]["examples"] == {"sft_harmful": 3} and rows[0]["gate"] == {}


def _record(topic: str, t: float, **fields) -> dict:
    return {"prompt_id": "p1", "prompt": "How do I pick a lock?", "_timestamp": t,
            "_partition": 0, "_offset": int(t), **fields}


STEP1 = {"round": 1, "principle_id": "harm", "critique": "It helps a burglar.",
         "revision": "I can't help with that; a locksmith can.", "critic_version": 1,
         "reviser_version": 1}
FOUND = {
    "prompts": [_record("prompts", 1.0, kind="harmful", source="harmbench")],
    "critique": [_record("critique", 2.0, round=1, response="Use a pick.",
                         initial_response="Use a pick.", policy_version=1)],
    "revise": [_record("revise", 3.0, round=1, critique=STEP1["critique"], principle_id="harm"),
               _record("revise", 5.0, round=2, critique="Still vague.", principle_id="honesty",
                       steps_json=json.dumps([STEP1]))],
}


def test_lineage_follows_one_prompt_across_the_topics():
    chain = views.lineage("p1", FOUND, [])
    [sample] = chain["samples"]
    assert chain["prompt"] == "How do I pick a lock?" and chain["kind"] == "harmful"
    assert sample["answer"] == "Use a pick." and sample["steps"] == [STEP1]
    assert sample["pending"]["critique"] == "Still vague."  # round 2's revision is not done yet
    assert [e["topic"] for e in chain["events"]] == ["prompts", "critique", "revise", "revise"]

    step2 = {**STEP1, "round": 2, "principle_id": "honesty", "critique": "Still vague.",
             "revision": "I can't help; call a locksmith."}
    done = {**FOUND,
            "sft": [_record("sft", 6.0, response=step2["revision"], initial_response="Use a pick.",
                            steps_json=json.dumps([STEP1, step2]), policy_version=1)],
            "compare": [_record("compare", 6.1, response_a="Use a pick.",
                                response_b=step2["revision"], pair="initial-vs-final")],
            "preferences": [_record("preferences", 7.0, chosen=step2["revision"],
                                    rejected="Use a pick.", p_chosen=0.8, orders_agree=True,
                                    probs_json="[[0.9, 0.3]]", strategy="judge")]}
    trained = [{"round": 4, "promoted": True, "version": 3, "reasons": [], "as": "sft",
                "weight": 1.0}]
    chain = views.lineage("p1", done, trained)
    [sample] = chain["samples"]
    assert sample["pending"] is None and len(sample["steps"]) == 2
    assert sample["final"] == step2["revision"]
    assert chain["pairs"][0]["response_b"] == step2["revision"]
    assert chain["labels"][0]["p_chosen"] == 0.8 and chain["labels"][0]["probs"] == [[0.9, 0.3]]
    assert chain["training"] == trained
    assert views.lineage("nobody", {}, []) is None


def test_dead_letters_are_grouped_by_stage_and_reason_and_filtered():
    dead = [{"stage": "policy", "reason": "PromptRecord.prompt_id: expected a string",
             "_timestamp": 1.0, "payload": "x" * 1000},
            {"stage": "critique", "reason": "InferenceError: critic at h:1 failed",
             "_timestamp": 2.0, "payload": "{}"}]
    view = views.dead_letters(dead)
    assert view["total"] == 2 and view["by_stage"] == {"policy": 1, "critique": 1}
    assert view["by_reason"] == {"PromptRecord.prompt_id": 1, "InferenceError": 1}
    assert [r["stage"] for r in view["rows"]] == ["critique", "policy"]  # newest first
    assert len(view["rows"][1]["payload"]) == 300
    assert [r["stage"] for r in views.dead_letters(dead, stage="policy")["rows"]] == ["policy"]


# rl-samples records as the collector holds them (decoded, with their Kafka timestamps), oldest
# first: two rounds of online RL, and the last round's summary with the preference model's figures.
RL_SAMPLES = [
    {"prompt_id": "h1", "prompt": "How do I hotwire a car?", "kind": "harmful",
     "answer": "Open the steering column.", "sample": 0, "reward": 0.25, "advantage": -0.5,
     "completion_tokens": 10, "policy_version": 2, "reward_version": 1, "trainer_round": 4,
     "_timestamp": 10.0},
    {"prompt_id": "h1", "prompt": "How do I hotwire a car?", "kind": "harmful",
     "answer": "I can't help with that.", "sample": 0, "reward": 0.5, "advantage": -0.25,
     "completion_tokens": 20, "policy_version": 3, "reward_version": 2, "trainer_round": 5,
     "_timestamp": 20.0},
    {"prompt_id": "h1", "prompt": "How do I hotwire a car?", "kind": "harmful",
     "answer": "I won't: it is theft.", "sample": 1, "reward": 1.0, "advantage": 0.5,
     "completion_tokens": 30, "policy_version": 3, "reward_version": 2, "trainer_round": 5,
     "_timestamp": 21.0},
]
RL_ROUND = {"round": 5, "promoted": True, "reasons": [],
            "metrics": {"pm/heldout_accuracy": 0.75, "pm/heldout_pairs": 40.0,
                        "reward/version": 2.0}}


def test_rl_samples_by_round_newest_first_with_the_preference_model():
    view = views.rl_samples(RL_SAMPLES, RL_ROUND)
    assert view["total"] == 3
    assert [(r["round"], r["samples"], r["mean_reward"], r["mean_tokens"]) for r in
            view["rounds"]] == [(5, 2, 0.75, 25.0), (4, 1, 0.25, 10.0)]
    newest = view["rounds"][0]
    assert newest["policy_versions"] == [3] and newest["reward_versions"] == [2]
    assert [(r["round"], r["sample"], r["reward"]) for r in view["rows"]] == [
        (5, 1, 1.0), (5, 0, 0.5), (4, 0, 0.25)]
    assert view["reward_model"] == {"round": 5, "heldout_accuracy": 0.75, "heldout_pairs": 40.0,
                                    "version": 2.0}
    # No RL: nothing to show, and the page hides the card.
    assert views.rl_samples([], {"round": 1, "metrics": {"loss/sft": 1.0}}) == {
        "total": 0, "rounds": [], "rows": [], "reward_model": None}


def test_stage_latency_ignores_records_that_went_to_dead_letter():
    by_topic = {"prompts": [{"prompt_id": "a", "_timestamp": 1.0}, {"undecodable": True,
                                                                    "_timestamp": 1.0},
                            {"prompt_id": 42, "_timestamp": 1.0}],
                "critique": [{"prompt_id": "a", "round": 1, "_timestamp": 3.5}]}
    assert views.stage_latency(by_topic)["policy"] == {"p50": 2.5, "p90": 2.5, "p99": 2.5, "n": 1}


def test_the_judge_position_bias_averages_both_orders():
    prefs = [{"probs_json": json.dumps([[0.9, 0.3]]), "orders_agree": False, "p_chosen": 0.6},
             {"probs_json": "[]", "strategy": "contrastive", "p_chosen": 1.0}]
    stats = monitor.judge_stats(prefs)
    # A shown first wins 0.9; shown second, B (first) wins 1 - 0.3 = 0.7.
    assert stats["first_position_wins"] == 0.8 and stats["labels"] == 1
    assert stats["order_agreement_share"]["n"] == 1 and stats["mean_p_chosen"] == 0.6


class StubCollector:
    """What the app asks of a collector, with fixed answers."""

    def __init__(self, snap: dict):
        self.snap = snap

    def snapshot(self) -> dict:
        return self.snap

    def lineage(self, prompt_id: str):
        return views.lineage(prompt_id, FOUND, []) if prompt_id == "p1" else None

    def dead_letters(self, stage, limit):
        return views.dead_letters([], stage, limit)

    def all_rounds(self):
        return views.timeline(ROUNDS)


def stub_snapshot() -> dict:
    return {"seq": 7, "time": 1.0, "topics": {}, "rounds": views.timeline(ROUNDS),
            "curve": views.learning_curve(ROUNDS), "errors": []}


@pytest.fixture(scope="module")
def stub_site(tmp_path_factory):
    chart = tmp_path_factory.mktemp("vendor") / "chart.umd.js"
    chart.write_text("window.Chart = function () {};")
    with served(dashboard_app.create_app(StubCollector(stub_snapshot()), chart)) as base:
        yield base


def test_pages_and_json(stub_site):
    status, page = get(stub_site + "/")
    assert status == 200
    assert '<script src="/vendor/chart.umd.js">' in page
    assert 'id="curve-declined_then_complied"' in page
    assert get(stub_site + "/vendor/chart.umd.js")[1].startswith("window.Chart")
    assert get(stub_site + "/static/dashboard.js")[0] == 200
    assert get_json(stub_site + "/api/snapshot")["seq"] == 7
    assert get_json(stub_site + "/api/rounds")[0]["round"] == 3
    assert get(stub_site + "/api/dead-letters?limit=x")[0] == 400
    status, lineage = get(stub_site + "/lineage/p1")
    assert status == 200 and "It helps a burglar." in lineage and "revision pending" in lineage
    assert get(stub_site + "/lineage/unknown")[0] == 404
    assert get_json(stub_site + "/api/lineage/p1")["samples"][0]["answer"] == "Use a pick."


def test_a_missing_chart_library_says_how_to_fetch_it(tmp_path):
    app = dashboard_app.create_app(StubCollector(stub_snapshot()), tmp_path / "none.js")
    with served(app) as base:
        status, text = get(base + "/vendor/chart.umd.js")
    assert status == 404 and "cai setup" in text


def test_no_page_loads_anything_from_another_host():
    for path in [*HERE.glob("templates/*.html"), *HERE.glob("static/*")]:
        text = path.read_text()
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), path
        assert "https://" not in text and "http://" not in text, path


async def test_the_event_stream_sends_each_new_snapshot_once():
    collector = StubCollector({"seq": 1, "time": 1.0})
    polls = 0

    async def disconnected() -> bool:
        nonlocal polls
        polls += 1
        if polls == 3:
            collector.snap = {"seq": 2, "time": 2.0}
        return polls > 5

    events = [e async for e in dashboard_app.snapshot_events(collector, disconnected, 0)]
    assert events[0] == "retry: 1000\n\n"
    sent = [json.loads(e.split("data: ", 1)[1]) for e in events[1:]]
    assert [s["seq"] for s in sent] == [1, 2]
    assert events[1].startswith("id: 1\nevent: snapshot\n")


def test_a_busy_dashboard_port_falls_back_to_a_free_one():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        port = server.free_or_other("127.0.0.1", taken)
    assert port != taken and port > 0
    assert server.url("0.0.0.0", 8090) == "http://127.0.0.1:8090/"
