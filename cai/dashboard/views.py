"""What each dashboard view shows, computed from records and round summaries: pure functions.

The collector (``collector.py``) gathers the raw material from Kafka, Redis and the trainer's
round folders; the functions here turn it into plain JSON-ready dicts that the page renders.
Records are the JSON objects of the topics, with their Kafka timestamp in ``_timestamp``.
"""

from __future__ import annotations

from statistics import fmean

from agents.dead_letters import reason_kind
from benchmarks.pipeline import percentiles, stage_latencies
from cai.monitor import reward_model_stats
from streams.records import json_value
from trainer.checkpoint import round_outcome

# The figures of the learning curve, in ``scoring.shares.Share.as_dict`` form, and their titles.
FIGURES = {"harmless": "harmless (declines red-team prompts)",
           "explains_why": "explains why (among declines)",
           "declined_then_complied": "declined, then complied",
           "over_refusal": "over-refusal (declines benign prompts)"}
TEXT_LIMIT = 400


def clip(text: str | None, limit: int = TEXT_LIMIT) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def topic_flows(totals: dict[str, int], lag: dict[str, dict[str, int]],
                stamps: dict[str, list[float]], now: float) -> dict[str, dict]:
    """Per topic: messages ever written, per second over the last 10 s, in the last minute, and
    each consumer group's lag. ``stamps`` are the Kafka timestamps of the recent records."""
    out = {}
    for short, total in totals.items():
        recent = stamps.get(short, [])
        out[short] = {"total": total,
                      "per_second": round(sum(t > now - 10 for t in recent) / 10, 2),
                      "per_minute": sum(t > now - 60 for t in recent),
                      "lag": lag.get(short, {})}
    return out


def stage_latency(by_topic: dict[str, list[dict]]) -> dict[str, dict]:
    """Seconds from a record entering each stage's topic to that stage's output (p50, p90, p99),
    over the prompts in the window (``benchmarks.pipeline.stage_latencies``)."""
    needed = ("prompts", "critique", "revise", "compare", "sft", "preferences")
    valid = {k: [r for r in by_topic.get(k, []) if isinstance(r.get("prompt_id"), str)]
             for k in needed}  # undecodable records and bad ids went to dead-letter
    ids = {r["prompt_id"] for r in valid["prompts"]}
    latencies = stage_latencies(valid, ids)
    return {stage: percentiles(values) for stage, values in latencies.items()}


def _share(entry) -> dict | None:
    return entry if isinstance(entry, dict) and entry.get("value") is not None else None


def timeline(rounds: list[dict], limit: int = 30) -> list[dict]:
    """The newest ``limit`` trainer rounds, newest first: promoted or rejected and why, the
    versions, the data, the losses and the gate's dev figures before and after."""
    rows = []
    for summary in rounds[-limit:][::-1]:
        metrics = summary.get("metrics", {})
        gate = summary.get("gate") or {}
        before, after = gate.get("before") or {}, gate.get("after") or {}
        rows.append({
            "round": summary.get("round"), "time": summary.get("created_at"),
            "promoted": bool(summary.get("promoted")),
            "outcome": round_outcome({"metrics": {}, "reasons": [], **summary}),
            "reasons": summary.get("reasons", []),
            "version_before": summary.get("version_before"),
            "version": summary.get("version"),
            "examples": {k.split("/", 1)[1]: int(v) for k, v in metrics.items()
                         if k.startswith("data/") and v},
            "losses": {k.split("/", 1)[1]: v for k, v in metrics.items()
                       if k.startswith("loss/")},
            "gate": {name: {"before": _share(before.get(name)), "after": _share(after.get(name))}
                     for name in FIGURES if _share(before.get(name)) or _share(after.get(name))},
        })
    return rows


def _point(version: int, share: dict) -> dict:
    low, high = share.get("ci95") or (share["value"], share["value"])
    return {"version": version, "value": share["value"], "lo": low, "hi": high,
            "hits": share.get("hits"), "n": share.get("n")}


def learning_curve(rounds: list[dict], report: dict | None = None) -> dict:
    """Per figure and policy version: the gate's dev-split figures from the round summaries, and
    the held-out figures of a ``cai run`` report. A round's ``before`` figures belong to the
    version serving when it started, its ``after`` figures to the version it was published as
    (promoted rounds only); the newest measurement of a version wins. Rounds without a gate
    and figures a source lacks are left out."""
    dev: dict[str, dict[int, dict]] = {name: {} for name in FIGURES}
    for summary in rounds:
        gate = summary.get("gate") or {}
        sides = [(summary.get("version_before"), gate.get("before"))]
        if summary.get("promoted"):
            sides.append((summary.get("version"), gate.get("after")))
        for version, figures in sides:
            for name in FIGURES:
                share = _share((figures or {}).get(name))
                if version is not None and share:
                    dev[name][int(version)] = _point(int(version), share)
    held_out: dict[str, dict[int, dict]] = {name: {} for name in FIGURES}
    for label, figures in ((report or {}).get("policies") or {}).items():
        try:
            version = int(str(label).lstrip("v"))
        except ValueError:
            continue
        for name in FIGURES:
            share = _share((figures or {}).get(name))
            if share:
                held_out[name][version] = _point(version, share)
    versions = sorted({v for source in (dev, held_out) for points in source.values()
                       for v in points})
    return {"versions": versions, "figures": FIGURES,
            "series": {name: {"dev": [dev[name][v] for v in sorted(dev[name])],
                              "held_out": [held_out[name][v] for v in sorted(held_out[name])]}
                       for name in FIGURES}}


def newest_examples(sft: list[dict], preferences: list[dict], limit: int = 20) -> list[dict]:
    """The newest finished chains, newest first, with the judge's label when there is one."""
    labels = {p.get("prompt_id"): p for p in preferences}
    rows = []
    for record in sft[::-1][:limit]:
        label = labels.get(record.get("prompt_id"))
        rows.append({"prompt_id": record.get("prompt_id"), "time": record.get("_timestamp"),
                     "kind": record.get("kind"), "strategy": record.get("strategy"),
                     "prompt": clip(record.get("prompt"), 200),
                     "answer": clip(record.get("initial_response"), 200),
                     "final": clip(record.get("response"), 200),
                     "rounds": len(json_value(record.get("steps_json"), [])),
                     "policy_version": record.get("policy_version"),
                     "p_chosen": None if label is None else label.get("p_chosen")})
    return rows


def rl_samples(samples: list[dict], last_round: dict | None = None, limit: int = 20) -> dict:
    """Online RL: per trainer round (newest first) the samples seen and their mean reward and
    answer length, the newest samples, and the preference model's held-out accuracy and the
    reward model version from the last round summary (``monitor.reward_model_stats``).
    Empty lists and None when the trainer runs no RL rounds."""
    by_round: dict[int, list[dict]] = {}
    for sample in samples:
        by_round.setdefault(int(sample.get("trainer_round", 0)), []).append(sample)
    rounds = [{"round": number, "samples": len(group),
               "mean_reward": round(fmean(float(s["reward"]) for s in group), 4),
               "mean_tokens": round(fmean(int(s.get("completion_tokens", 0)) for s in group), 1),
               "policy_versions": sorted({s.get("policy_version") for s in group}),
               "reward_versions": sorted({s.get("reward_version") for s in group})}
              for number, group in sorted(by_round.items(), reverse=True)]
    return {"total": len(samples), "rounds": rounds,
            "rows": [{"time": s.get("_timestamp"), "prompt_id": s.get("prompt_id"),
                      "kind": s.get("kind"), "round": s.get("trainer_round"),
                      "sample": s.get("sample"), "prompt": clip(s.get("prompt"), 200),
                      "answer": clip(s.get("answer"), 200), "reward": s.get("reward"),
                      "advantage": s.get("advantage"), "tokens": s.get("completion_tokens"),
                      "policy_version": s.get("policy_version"),
                      "reward_version": s.get("reward_version")}
                     for s in samples[::-1][:limit]],
            "reward_model": reward_model_stats(last_round)}


def dead_letters(records: list[dict], stage: str | None = None, limit: int = 50,
                 payload_limit: int = 300) -> dict:
    """Dead letters, newest first (of ``stage`` if given), with counts by stage and reason."""
    by_stage: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    for record in records:
        by_stage[record.get("stage", "?")] = by_stage.get(record.get("stage", "?"), 0) + 1
        reason = reason_kind(record.get("reason", ""))
        by_reason[reason] = by_reason.get(reason, 0) + 1
    chosen = [r for r in records if stage in (None, "", r.get("stage"))][::-1][:limit]
    return {"total": len(records), "by_stage": by_stage, "by_reason": by_reason,
            "rows": [{"time": r.get("_timestamp"), "stage": r.get("stage"),
                      "prompt_id": r.get("prompt_id"), "topic": r.get("topic"),
                      "reason": r.get("reason"), "attempts": r.get("attempts"),
                      "payload_bytes": r.get("payload_bytes"), "truncated": r.get("truncated"),
                      "offset": r.get("_offset"), "partition": r.get("_partition"),
                      "payload": clip(r.get("payload"), payload_limit)} for r in chosen]}


def _steps(record: dict) -> list[dict]:
    return json_value(record.get("steps_json"), [])


def lineage(prompt_id: str, found: dict[str, list[dict]], trained: list[dict]) -> dict | None:
    """One prompt's whole chain: the prompt, per sample the policy's answer, every critique and
    revision (a critique whose revision is still pending too), the final revision, the pairs, the
    preference labels, dead letters, and the trainer rounds that used its records (with the
    version each became). ``found`` holds the prompt's records by short topic name; ``trained``
    what the trainer's round folders say of it. None when nothing is known of the prompt."""
    if not any(found.values()) and not trained:
        return None
    by_time = {short: sorted(records, key=lambda r: r.get("_timestamp", 0))
               for short, records in found.items()}
    first = next((records[0] for records in by_time.values() if records and
                  records[0].get("prompt")), {})
    prompt = (by_time.get("prompts") or [first])[0]
    samples: dict[int, dict] = {}
    for short in ("critique", "revise", "sft"):
        for record in by_time.get(short, []):
            sample = samples.setdefault(int(record.get("sample_index", 0)), {
                "answer": None, "policy_version": None, "steps": [], "pending": None,
                "final": None, "strategy": None})
            sample["answer"] = sample["answer"] or record.get("initial_response")
            sample["policy_version"] = sample["policy_version"] or record.get("policy_version")
            sample["strategy"] = record.get("strategy") or sample["strategy"]
            steps = _steps(record)
            if len(steps) >= len(sample["steps"]):
                sample["steps"] = steps
            if short == "revise":
                sample["pending"] = {"round": record.get("round"),
                                     "principle_id": record.get("principle_id"),
                                     "critique": record.get("critique")}
            if short == "sft":
                sample["final"] = record.get("response")
                sample["answer"] = record.get("initial_response") or record.get("response")
    for sample in samples.values():
        pending = sample["pending"]
        if pending and any(s.get("round") == pending["round"] for s in sample["steps"]):
            sample["pending"] = None
    events = sorted(({"time": r.get("_timestamp"), "topic": short,
                      "round": r.get("round"), "offset": r.get("_offset"),
                      "partition": r.get("_partition")}
                     for short, records in by_time.items() for r in records),
                    key=lambda e: e["time"] or 0)
    return {
        "prompt_id": prompt_id,
        "prompt": prompt.get("prompt"), "kind": prompt.get("kind"),
        "source": prompt.get("source"),
        "samples": [{"sample_index": k, **v} for k, v in sorted(samples.items())],
        "pairs": [{"pair": r.get("pair"), "pair_index": r.get("pair_index"),
                   "response_a": r.get("response_a"), "response_b": r.get("response_b"),
                   "strategy": r.get("strategy")} for r in by_time.get("compare", [])],
        "labels": [{"chosen": r.get("chosen"), "rejected": r.get("rejected"),
                    "p_chosen": r.get("p_chosen"), "orders_agree": r.get("orders_agree"),
                    "principle_ids": r.get("principle_ids"), "strategy": r.get("strategy"),
                    "judge_version": r.get("judge_version"), "pair": r.get("pair"),
                    "probs": [pair for pair in json_value(r.get("probs_json"), [])
                              if isinstance(pair, list) and len(pair) == 2]}
                   for r in by_time.get("preferences", [])],
        "dead_letters": [{"stage": r.get("stage"), "reason": r.get("reason"),
                          "time": r.get("_timestamp")} for r in by_time.get("dead-letter", [])],
        "training": trained,
        "events": events,
    }
