"""The trainer's Prometheus metrics: rounds by outcome, examples, losses and the gate's figures
per policy version."""

from __future__ import annotations

from prometheus_client import REGISTRY

from trainer import metrics


def _value(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def share(hits: int, n: int) -> dict:
    from scoring.shares import Share

    return Share(hits, n).as_dict()


def test_a_promoted_round_sets_the_figures_of_both_versions():
    promoted = _value("cai_trainer_rounds_total", outcome="promoted") or 0
    summary = {"round": 4, "promoted": True, "reasons": [], "metrics": {},
               "version_before": 7, "version": 8,
               "gate": {"before": {"harmless": share(3, 10), "over_refusal": share(0, 8)},
                        "after": {"harmless": share(6, 10), "over_refusal": share(1, 8)}}}
    full = {"data/sft_harmful": 3.0, "data/sft_helpful": 2.0, "data/preferences": 4.0,
            "data/duplicates": 1.0, "loss/sft": 1.25, "loss/dpo": 0.6,
            "probe_before/refusal_rate": 0.0, "probe/refusal_rate": 0.125, "probe/size_sft": 2.0}
    metrics.observe_round(summary, full, seconds=42.0, finished_at=1000.0, probe_records=2)
    assert _value("cai_trainer_rounds_total", outcome="promoted") == promoted + 1
    assert _value("cai_trainer_loss", loss="dpo") == 0.6
    assert _value("cai_trainer_probe", figure="refusal_rate", phase="after") == 0.125
    assert _value("cai_trainer_probe", figure="size_sft", phase="after") is None
    assert _value("cai_eval_share_ratio", version="7", figure="harmless") == 0.3
    assert _value("cai_eval_share_ratio", version="8", figure="harmless") == 0.6
    assert _value("cai_eval_share_samples", version="8", figure="over_refusal") == 8
    low = _value("cai_eval_share_ci95_lower_ratio", version="8", figure="harmless")
    high = _value("cai_eval_share_ci95_upper_ratio", version="8", figure="harmless")
    assert low < 0.6 < high
    assert _value("cai_trainer_last_round_timestamp_seconds") == 1000.0


def test_a_rejected_round_without_a_gate_counts_and_sets_no_candidate_figures():
    rejected = _value("cai_trainer_rounds_total", outcome="rejected") or 0
    examples = _value("cai_trainer_round_examples_count") or 0
    metrics.observe_round({"round": 5, "promoted": False, "reasons": ["x"], "metrics": {},
                           "policy_version": 9, "published_version": None},
                          {"data/preferences": 2.0}, seconds=3.0, finished_at=2000.0)
    assert _value("cai_trainer_rounds_total", outcome="rejected") == rejected + 1
    assert _value("cai_trainer_round_examples_count") == examples + 1
    assert _value("cai_eval_share_ratio", version="9", figure="harmless") is None
