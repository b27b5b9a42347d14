"""`cai monitor`: a live view of the topic streams, the judge and the trainer.

In online RL rounds it also shows the sampled answers on ``rl-samples`` (how many, mean reward,
mean length, the newest), and the preference model's held-out accuracy and the reward model
version from the trainer's last round summary, each only when present.

It reads only Kafka and Redis, so it works the same against a docker-compose deployment
(set ``CAI_KAFKA_BOOTSTRAP`` and ``CAI_REDIS_URL``). ``--once --json`` prints one snapshot.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter, defaultdict

from core.settings import StackSettings
from serving.publish import REDIS_VERSION_KEY
from stack.supervisor import recent_alarms
from streams import topics
from streams.records import RECORDS, json_value
from streams.settings import StreamSettings
from streams.topic_stats import TopicReader
from trainer.checkpoint import round_outcome

STAGE_TOPICS = (topics.PROMPTS, topics.CRITIQUE, topics.REVISE, topics.COMPARE)
OUTPUT_TOPICS = (topics.SFT, topics.PREFERENCES, topics.POLICY_VERSIONS, topics.DEAD_LETTER,
                 topics.RL_SAMPLES)
# What the trainer's round metrics say of the preference (reward) model, when it has one.
REWARD_MODEL_METRICS = {"heldout_accuracy": "pm/heldout_accuracy",
                        "heldout_pairs": "pm/heldout_pairs", "version": "reward/version"}


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def principle_stats(sft_records: list[dict], preferences: list[dict]) -> dict[str, dict]:
    """Per principle: rounds seen, share where the revision left the answer unchanged, judge
    margin."""
    stats: dict[str, dict] = defaultdict(lambda: {"rounds": 0, "unchanged": 0, "margins": []})
    for record in sft_records:
        previous = record.get("initial_response", "")
        for step in json_value(record.get("steps_json"), []):
            entry = stats[str(step.get("principle_id", "?"))]
            entry["rounds"] += 1
            revision = step.get("revision", "")
            entry["unchanged"] += int(_normalise(revision) == _normalise(previous))
            previous = revision
    for pref in preferences:
        for pid in filter(None, (pref.get("principle_ids") or "").split(",")):
            stats[pid]["margins"].append(abs(float(pref.get("p_chosen", 0.5)) - 0.5))
    return {
        pid: {
            "rounds": e["rounds"],
            "no_change_rate": round(e["unchanged"] / e["rounds"], 3) if e["rounds"] else None,
            "judge_margin": round(statistics.fmean(e["margins"]), 3) if e["margins"] else None,
            "labels": len(e["margins"]),
        }
        for pid, e in sorted(stats.items())
    }


def newest_example(sft_records: list[dict], preferences: list[dict]) -> dict | None:
    if not sft_records:
        return None
    latest = sft_records[-1]
    steps = json_value(latest.get("steps_json"), [])
    example = {
        "prompt_id": latest.get("prompt_id"),
        "prompt": latest.get("prompt"),
        "answer": latest.get("initial_response"),
        "steps": [{"principle_id": s.get("principle_id"), "critique": s.get("critique"),
                   "revision": s.get("revision")} for s in steps],
        "final": latest.get("response"),
        "policy_version": latest.get("policy_version"),
    }
    for pref in reversed(preferences):
        if pref.get("prompt_id") == latest.get("prompt_id"):
            example["judge"] = {"p_chosen": pref.get("p_chosen"),
                                "orders_agree": pref.get("orders_agree"),
                                "chosen_is_revision": pref.get("chosen") == latest.get("response")}
            break
    return example


def judge_stats(preferences: list[dict]) -> dict:
    """The judge's statistics over the labels it made: how often both orders agreed (with the
    95% interval), its position bias (how often the answer shown first wins, averaged over both
    orders: 0.5 is none), the mean soft label, and how many labels each strategy made.

    Only labels the judge made count: contrastive and revision-over-initial labels are set by
    construction (they carry no per-order probabilities).
    """
    from scoring.shares import Share

    judged = [(p, json_value(p.get("probs_json"), [])) for p in preferences]
    judged = [(p, probs) for p, probs in judged if probs]
    agree = [bool(p.get("orders_agree")) for p, _ in judged]
    # Each entry is (P(A better) with A shown first, P(A better) with A shown second).
    first_wins = [(pair[0] + 1 - pair[1]) / 2 for _, probs in judged for pair in probs
                  if isinstance(pair, list) and len(pair) == 2]
    return {
        "labels": len(judged),
        "order_agreement": round(sum(agree) / len(agree), 3) if agree else None,
        "order_agreement_share": Share(sum(agree), len(agree)).as_dict(),
        "first_position_wins": round(statistics.fmean(first_wins), 3) if first_wins else None,
        "mean_p_chosen": round(statistics.fmean(float(p.get("p_chosen", 0.5))
                                                for p, _ in judged), 3) if judged else None,
        "preferences_by_strategy": dict(Counter(p.get("strategy", "judge") for p in preferences)),
    }


def rl_stats(samples: list[dict]) -> dict | None:
    """Online RL over the recent window of ``rl-samples``: how many samples, their mean reward
    and answer length, the newest round's mean reward, and the newest sample; None when no
    samples flow (the trainer runs no RL rounds)."""
    if not samples:
        return None
    newest = samples[-1]
    this_round = [s for s in samples if s.get("trainer_round") == newest.get("trainer_round")]
    return {
        "samples": len(samples),
        "mean_reward": round(statistics.fmean(float(s["reward"]) for s in samples), 4),
        "mean_tokens": round(statistics.fmean(int(s.get("completion_tokens", 0))
                                              for s in samples), 1),
        "round": newest.get("trainer_round"),
        "round_mean_reward": round(statistics.fmean(float(s["reward"]) for s in this_round), 4),
        "newest": {k: newest.get(k) for k in (
            "prompt_id", "prompt", "kind", "answer", "sample", "reward", "advantage",
            "completion_tokens", "policy_version", "reward_version", "trainer_round")},
    }


def reward_model_stats(last_round: dict | None) -> dict | None:
    """The preference model's held-out accuracy (and pairs) and the reward model version from
    the trainer's last round summary; None when the round has none of them."""
    metrics = (last_round or {}).get("metrics") or {}
    found = {name: metrics[key] for name, key in REWARD_MODEL_METRICS.items()
             if isinstance(metrics.get(key), (int, float))
             and not isinstance(metrics.get(key), bool)}
    return {"round": last_round.get("round"), **found} if found else None


def snapshot(stack_settings: StackSettings, stream_settings: StreamSettings,
             window: int = 200) -> dict:
    """Everything the monitor shows, as one JSON-serialisable dict."""
    reader = TopicReader(stream_settings.kafka_address)
    try:
        groups = (stream_settings.app_id, topics.TRAINER_GROUP)
        flows = {short: reader.flow(topics.topic_name(short, stream_settings), groups)
                 for short in STAGE_TOPICS + OUTPUT_TOPICS}
        # Strictly decoded: hostile records on these topics are left out of every view.
        sft = reader.tail(topics.topic_name(topics.SFT, stream_settings), window,
                          RECORDS[topics.SFT])
        prefs = reader.tail(topics.topic_name(topics.PREFERENCES, stream_settings), window,
                            RECORDS[topics.PREFERENCES])
        versions = reader.tail(topics.topic_name(topics.POLICY_VERSIONS, stream_settings), 20,
                               RECORDS[topics.POLICY_VERSIONS])
        samples = reader.tail(topics.topic_name(topics.RL_SAMPLES, stream_settings), window,
                              RECORDS[topics.RL_SAMPLES])
    finally:
        reader.close()
    last_round = _last_round(stack_settings)
    trainer_rounds = []
    for event in versions:
        metrics = json_value(event.get("metrics_json"), {})
        trainer_rounds.append({"version": event.get("version"), **metrics})
    return {
        "time": time.time(),
        "topics": {
            short: {"total": f.total, "per_minute": f.last_minute, "lag": f.lag}
            for short, f in flows.items()
        },
        "in_flight": {short: flows[short].lag.get(stream_settings.app_id, 0)
                      for short in STAGE_TOPICS},
        "newest_example": newest_example(sft, prefs),
        "principles": principle_stats(sft, prefs),
        "judge": judge_stats(prefs),
        # How the pipeline cleaned the training targets (agents/targets.py), in the recent window.
        "targets": {"sft": dict(Counter(r.get("target") or "unchecked" for r in sft)),
                    "preferences": dict(Counter(p.get("target") or "unchecked" for p in prefs))},
        "trainer": {"rounds": trainer_rounds[-5:], "published": len(versions),
                    "last_round": last_round},
        # Online RL (rl-samples) and the reward model: None when the trainer runs no RL.
        "rl": rl_stats(samples),
        "reward_model": reward_model_stats(last_round),
        "serving_policy_version": _serving_version(stack_settings),
        # The supervisor's restarts and alarms (stall, service down), newest last.
        "alarms": recent_alarms(stack_settings, 5),
    }


def _targets(counts: dict | None) -> str:
    counts = counts or {}
    return "/".join(str(counts.get(action, 0)) for action in ("kept", "cut", "dropped"))


def _redis_value(settings: StackSettings, key: str) -> bytes | None:
    """One key of the live state, or None when it is unset or Redis cannot be reached."""
    import redis

    try:
        return redis.Redis.from_url(settings.redis_address, socket_timeout=2).get(key)
    except redis.RedisError:
        return None


def _last_round(settings: StackSettings) -> dict | None:
    """The trainer's newest finished round, promoted or rejected (trainer/publisher.py)."""
    from trainer.publisher import REDIS_LAST_ROUND_KEY

    value = _redis_value(settings, REDIS_LAST_ROUND_KEY)
    return json.loads(value) if value else None


def _serving_version(settings: StackSettings) -> int | None:
    value = _redis_value(settings, REDIS_VERSION_KEY)
    return int(value) if value else None


def render(snap: dict):
    """A rich renderable of one snapshot."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    flow = Table(title="topics", expand=True)
    for col in ("topic", "total", "/min", "lag (group)", "in flight"):
        flow.add_column(col, justify="right" if col != "topic" else "left")
    for short, info in snap["topics"].items():
        lag = ", ".join(f"{g}={n}" for g, n in info["lag"].items()) or "-"
        flight = snap["in_flight"].get(short)
        flow.add_row(short, str(info["total"]), str(info["per_minute"]), lag,
                     "-" if flight is None else str(flight))

    principles = Table(title="principles (recent window)", expand=True)
    for col in ("principle", "rounds", "no change", "judge margin", "labels"):
        principles.add_column(col)
    for pid, p in list(snap["principles"].items())[:16]:
        principles.add_row(pid, str(p["rounds"]), _pct(p["no_change_rate"]),
                           "-" if p["judge_margin"] is None else f"{p['judge_margin']:.2f}",
                           str(p["labels"]))

    judge = snap["judge"]
    trainer = snap["trainer"]
    last_round = trainer["rounds"][-1] if trainer["rounds"] else {}
    figures = {k: round(v, 3) for k, v in last_round.items()
               if isinstance(v, (int, float)) and k.startswith(("dev/", "loss/", "data/"))}
    outcome = round_outcome(trainer["last_round"]) if trainer.get("last_round") else "-"
    mean_p = judge["mean_p_chosen"] if judge["mean_p_chosen"] is not None else "-"
    targets = snap.get("targets") or {}
    status = (
        f"policy version serving: {snap['serving_policy_version'] or '-'}   "
        f"published: {trainer['published']}   "
        f"last round: {outcome}\n"
        f"last published round: {json.dumps(figures)[:200]}\n"
        f"training targets (kept/cut/dropped): sft {_targets(targets.get('sft'))}   "
        f"chosen {_targets(targets.get('preferences'))}\n"
        f"preferences by strategy: {judge.get('preferences_by_strategy') or '-'}\n"
        f"judge labels: {judge['labels']}   "
        f"order-swap agreement: {_pct(judge['order_agreement'])}   mean p_chosen: {mean_p}"
    )
    rl, reward_model = snap.get("rl"), snap.get("reward_model")
    if rl:
        status += (f"\nRL samples (recent window): {rl['samples']}   "
                   f"mean reward: {rl['mean_reward']:.3f}   "
                   f"mean answer tokens: {rl['mean_tokens']:.1f}   "
                   f"round {rl['round']}: mean reward {rl['round_mean_reward']:.3f}")
    if reward_model:
        status += "\n" + _reward_model_line(reward_model)
    parts = [flow, Panel(status, title="trainer / judge"), principles]
    alarms = snap.get("alarms") or []
    if alarms:
        parts.insert(1, Panel("\n".join(
            f"{time.strftime('%H:%M:%S', time.localtime(a.get('time', 0)))} "
            f"[b]{_clip(str(a.get('kind')), 20)}[/b] {_clip(str(a.get('message')))}"
            for a in alarms), title="alarms (supervisor)", border_style="red"))
    example = snap["newest_example"]
    if example:
        lines = [f"[b]prompt[/b] {_clip(example['prompt'])}",
                 f"[b]answer[/b] {_clip(example['answer'])}"]
        for step in example["steps"]:
            lines.append(f"[b]critique[/b] ({step['principle_id']}) {_clip(step['critique'])}")
            lines.append(f"[b]revision[/b] {_clip(step['revision'])}")
        if "judge" in example:
            lines.append(f"[b]judge[/b] p_chosen={example['judge']['p_chosen']:.3f} "
                         f"orders agree={example['judge']['orders_agree']}")
        parts.append(Panel("\n".join(lines), title=f"newest example {example['prompt_id']}"))
    if rl:
        newest = rl["newest"]
        scored = (f"[b]reward[/b] {newest['reward']:.3f}   "
                  f"advantage {newest['advantage']:+.3f}   sample {newest['sample']}   "
                  f"policy v{newest['policy_version']}   reward v{newest['reward_version']}")
        parts.append(Panel("\n".join([
            f"[b]prompt[/b] ({newest['kind']}) {_clip(newest['prompt'])}",
            f"[b]answer[/b] {_clip(newest['answer'])}", scored]),
            title=f"newest RL sample {_clip(str(newest['prompt_id']), 80)} "
                  f"(round {newest['trainer_round']})"))
    return Group(*parts)


def _reward_model_line(stats: dict) -> str:
    """'preference model (round 3): held-out accuracy 71% (n=120)   reward model v4'."""
    words = []
    if "heldout_accuracy" in stats or "heldout_pairs" in stats:
        pairs = stats.get("heldout_pairs")
        words.append(f"held-out accuracy {_pct(stats.get('heldout_accuracy'))}"
                     + (f" (n={int(pairs)})" if pairs is not None else ""))
    if "version" in stats:
        words.append(f"reward model v{int(stats['version'])}")
    return f"preference model (round {stats.get('round')}): " + "   ".join(words)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _clip(text: str | None, limit: int = 240) -> str:
    from rich.markup import escape

    text = " ".join((text or "").split())
    return escape(text if len(text) <= limit else text[: limit - 1] + "…")


def run(stack_settings: StackSettings, stream_settings: StreamSettings, interval_s: float = 2.0,
        until=None) -> None:
    """Refresh the view every ``interval_s`` until Ctrl-C or ``until()`` returns True."""
    from rich.live import Live

    with Live(render(snapshot(stack_settings, stream_settings)), refresh_per_second=1,
              screen=False) as live:
        while until is None or not until():
            time.sleep(interval_s)
            live.update(render(snapshot(stack_settings, stream_settings)))
