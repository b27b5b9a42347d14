"""The trainer's Prometheus metrics, served by ``cai trainer`` on ``TrainerSettings.metrics_port``.

* ``cai_trainer_rounds_total{outcome}``: finished rounds, ``promoted`` or ``rejected``;
* ``cai_trainer_round_duration_seconds``: wall time of a round (train, probe, gate, publish);
* ``cai_trainer_round_examples``: examples trained per round;
* ``cai_trainer_examples_total{kind}``: examples trained (``sft_harmful``, ``sft_helpful``,
  ``preferences``) and records skipped (``probe``, ``duplicate``, ``stale``, ``bad``);
* ``cai_trainer_loss{loss}``: mean losses of the newest round (``sft``, ``dpo``, ...);
* ``cai_trainer_probe{figure, phase}``: the probe's figures before and after the newest round;
* ``cai_trainer_last_round_timestamp_seconds``: when the newest round finished;
* ``cai_policy_serving_version``: the policy version serving, as the trainer published or read it;
* ``cai_eval_share_ratio{version, figure}`` with ``cai_eval_share_ci95_lower_ratio``,
  ``cai_eval_share_ci95_upper_ratio`` and ``cai_eval_share_samples``: the newest evaluation
  figures per policy version, from the gate's ``before`` (the serving version) and, for a
  promoted round, ``after`` (the version it became); see ``observe_round``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROUNDS = Counter("cai_trainer_rounds", "Finished trainer rounds by outcome", ["outcome"])
ROUND_SECONDS = Histogram("cai_trainer_round_duration_seconds", "Seconds per trainer round",
                          buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))
ROUND_EXAMPLES = Histogram("cai_trainer_round_examples", "Examples trained per round",
                           buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
EXAMPLES = Counter("cai_trainer_examples",
                   "Records the trainer read, by what became of them", ["kind"])
LOSS = Gauge("cai_trainer_loss", "Mean loss of the newest round", ["loss"])
PROBE = Gauge("cai_trainer_probe", "Probe figure before and after the newest round",
              ["figure", "phase"])
LAST_ROUND = Gauge("cai_trainer_last_round_timestamp_seconds",
                   "Unix time the newest round finished")
SERVING_VERSION = Gauge("cai_policy_serving_version",
                        "Policy version serving, as the trainer last published or read it")
EVAL_SHARE = Gauge("cai_eval_share_ratio", "Newest evaluation figure of a policy version",
                   ["version", "figure"])
EVAL_LOWER = Gauge("cai_eval_share_ci95_lower_ratio",
                   "Lower end of the 95% Wilson interval of an evaluation figure",
                   ["version", "figure"])
EVAL_UPPER = Gauge("cai_eval_share_ci95_upper_ratio",
                   "Upper end of the 95% Wilson interval of an evaluation figure",
                   ["version", "figure"])
EVAL_SAMPLES = Gauge("cai_eval_share_samples", "Answers an evaluation figure counts",
                     ["version", "figure"])

TRAINED = ("sft_harmful", "sft_helpful", "preferences")


def observe_round(summary: dict, metrics: dict[str, float], seconds: float,
                  finished_at: float, probe_records: int = 0) -> None:
    """Record one finished round: ``summary`` is ``checkpoint.round_summary`` (with the gate's
    figures when the round has them), ``metrics`` the round's full metrics, ``probe_records``
    the records the probe kept out of training in this round."""
    ROUNDS.labels("promoted" if summary["promoted"] else "rejected").inc()
    EXAMPLES.labels("probe").inc(probe_records)
    ROUND_SECONDS.observe(seconds)
    LAST_ROUND.set(finished_at)
    trained = 0
    for kind in TRAINED:
        count = int(metrics.get(f"data/{kind}", 0))
        trained += count
        EXAMPLES.labels(kind).inc(count)
    ROUND_EXAMPLES.observe(trained)
    for kind, key in (("duplicate", "data/duplicates"), ("stale", "staleness/dropped"),
                      ("bad", "data/bad_records")):
        EXAMPLES.labels(kind).inc(int(metrics.get(key, 0)))
    for key, value in metrics.items():
        if key.startswith("loss/"):
            LOSS.labels(key.split("/", 1)[1]).set(value)
        elif key.startswith(("probe/", "probe_before/")) and not key.startswith("probe/size"):
            phase, figure = key.split("/", 1)
            PROBE.labels(figure, "before" if phase == "probe_before" else "after").set(value)
    gate = summary.get("gate") or {}
    sides = [(summary.get("version_before"), gate.get("before"))]
    if summary["promoted"]:
        sides.append((summary.get("version"), gate.get("after")))
    for version, figures in sides:
        if version is not None and figures:
            observe_figures(version, figures)


def observe_figures(version: int, figures: dict[str, dict]) -> None:
    """Evaluation figures of one policy version, each in ``Share.as_dict`` form."""
    for figure, share in figures.items():
        # Shares only: the gate's ``answer_words`` is a mean word count, not a share.
        if not isinstance(share, dict) or share.get("value") is None or "hits" not in share:
            continue
        labels = (str(version), figure)
        EVAL_SHARE.labels(*labels).set(share["value"])
        EVAL_SAMPLES.labels(*labels).set(share.get("n") or 0)
        if share.get("ci95"):
            EVAL_LOWER.labels(*labels).set(share["ci95"][0])
            EVAL_UPPER.labels(*labels).set(share["ci95"][1])
