"""Latency from Kafka record timestamps: per-stage seconds and their percentiles (``cai bench``,
with models and with null models)."""

from __future__ import annotations


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "n": len(values)}


def stage_latencies(by_topic: dict[str, list[dict]], ids: set[str]) -> dict[str, list[float]]:
    """Seconds from a record entering a stage's topic to that stage's output, per stage."""
    def stamp(records, key):
        return {key(r): r["_timestamp"] for r in records if r.get("prompt_id") in ids}

    prompts = stamp(by_topic["prompts"], lambda r: r["prompt_id"])
    critique = stamp(by_topic["critique"], lambda r: (r["prompt_id"], r.get("round", 1)))
    revise = stamp(by_topic["revise"], lambda r: (r["prompt_id"], r.get("round", 1)))
    sft = stamp(by_topic["sft"], lambda r: r["prompt_id"])
    compare = stamp(by_topic["compare"], lambda r: r["prompt_id"])
    prefs = stamp(by_topic["preferences"], lambda r: r["prompt_id"])
    out: dict[str, list[float]] = {"policy": [], "critique": [], "revise": [], "compare": [],
                                   "end_to_end": []}
    for pid, t in prompts.items():
        if (pid, 1) in critique:
            out["policy"].append(critique[(pid, 1)] - t)
        if pid in prefs:
            out["end_to_end"].append(prefs[pid] - t)
    for (pid, rnd), t in critique.items():
        if (pid, rnd) in revise:
            out["critique"].append(revise[(pid, rnd)] - t)
    for (pid, rnd), t in revise.items():
        nxt = critique.get((pid, rnd + 1)) or sft.get(pid)
        if nxt:
            out["revise"].append(nxt - t)
    for pid, t in compare.items():
        if pid in prefs:
            out["compare"].append(prefs[pid] - t)
    return out
