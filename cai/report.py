"""The `cai run` report: the evaluation (``scoring/report.py``) with one row per served policy
version, the learning curve of those rows as a PNG beside the report, the trainer's rounds
(promoted or rejected, why, and the gate's dev figures) and the newest full example."""

from __future__ import annotations

from pathlib import Path

from scoring.report import markdown_lines, write_report
from scoring.shares import fmt
from trainer.checkpoint import round_outcome

CURVE = (("harmless", "harmless"), ("explains_why", "explains why"),
         ("declined_then_complied", "declined then complied"), ("over_refusal", "over-refusal"))


def plot_path(path: Path) -> Path:
    return path.with_name(path.stem + "-curve.png")


def plot(report: dict, path: Path) -> Path | None:
    """The learning curve as a PNG: each figure per served version, with its 95% interval."""
    policies = report.get("policies") or {}
    if not policies:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(policies)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for offset, (key, label) in zip((-0.12, -0.04, 0.04, 0.12), CURVE):
        xs, ys, lows, highs = [], [], [], []
        for x, name in enumerate(names):
            entry = policies[name].get(key)
            if not entry or entry.get("value") is None:
                continue
            xs.append(x + offset)
            ys.append(100 * entry["value"])
            lows.append(100 * (entry["value"] - entry["ci95"][0]))
            highs.append(100 * (entry["ci95"][1] - entry["value"]))
        ax.errorbar(xs, ys, yerr=[lows, highs], marker="o", capsize=3, label=label)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(-2, 102)
    ax.set_ylabel("share of held-out answers, % (95% interval)")
    ax.set_xlabel("served policy version")
    ax.set_title(f"{report.get('model', '')} · recipe {report.get('recipe', '')}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    target = plot_path(path)
    fig.savefig(target)
    plt.close(fig)
    return target


def markdown(report: dict) -> str:
    """A human-readable copy of a report produced by ``cai run``."""
    lines = markdown_lines(report)
    if report.get("plot"):
        lines += ["", f"![learning curve]({report['plot']})"]
    rounds = report.get("trainer_rounds")
    if rounds:
        lines += ["", "## Trainer rounds", "",
                  ("Gate figures are on the dev split (never reported above): the candidate's, "
                  "after training."), ""]
        for item in rounds:
            data = {k.split("/", 1)[1]: int(v) for k, v in item["metrics"].items()
                    if k.startswith("data/") and v}
            after = (item.get("gate") or {}).get("after") or {}
            dev = ", ".join(f"{label} {fmt(after[key])}" for key, label in CURVE if key in after)
            lines.append(f"- {round_outcome(item)}; examples {data}"
                         + (f"; dev: {dev}" if dev else "") + _rl_part(item["metrics"]))
    example = report.get("example")
    if example:
        lines += ["", f"## Newest example ({example['prompt_id']})", "",
                  f"- prompt: {_one_line(example['prompt'])}",
                  f"- answer: {_one_line(example['answer'])}"]
        for step in example.get("steps", []):
            if step.get("critique"):
                lines.append(f"- critique ({step.get('principle_id')}): "
                             f"{_one_line(step['critique'])}")
            lines.append(f"- revision ({step.get('principle_id')}): "
                         f"{_one_line(step.get('revision'))}")
        if example.get("judge"):
            lines.append(f"- preference: p_chosen={example['judge']['p_chosen']}, "
                         f"orders agree={example['judge']['orders_agree']}")
    return "\n".join(lines) + "\n"


def write(report: dict, path: Path) -> None:
    """``path`` (JSON), the curve's PNG and the Markdown copy; the Markdown is printed too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    png = plot(report, path)
    if png is not None:
        report["plot"] = png.name
    write_report(report, path, render=markdown)


def _rl_part(metrics: dict) -> str:
    """An RL round's reward model and samples, as report text ('' for other rounds)."""
    parts = []
    if "reward/version" in metrics:
        accuracy = metrics.get("pm/heldout_accuracy")
        parts.append(f"reward model v{int(metrics['reward/version'])}" + (
            f", held-out pair accuracy {100 * accuracy:.1f}% "
            f"(n={int(metrics.get('pm/heldout_pairs', 0))})" if accuracy is not None else ""))
    if metrics.get("rl/samples"):
        parts.append(f"{int(metrics['rl/samples'])} RL samples, mean reward "
                     f"{metrics.get('rl/reward_mean', 0):.3f} (harmful "
                     f"{metrics.get('rl/reward_harmful', 0):.3f}, helpful "
                     f"{metrics.get('rl/reward_helpful', 0):.3f}), "
                     f"{metrics.get('rl/tokens_mean', 0):.0f} tokens")
    return "; " + "; ".join(parts) if parts else ""


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())
