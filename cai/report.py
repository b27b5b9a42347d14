"""The `cai run` report in Markdown: the evaluation (``scoring/report.py``), then the trainer's
rounds (promoted or rejected, and why) and the newest full example from the stream."""

from __future__ import annotations

from pathlib import Path

from scoring.report import markdown_lines, write_report
from trainer.checkpoint import round_outcome


def markdown(report: dict) -> str:
    """A human-readable copy of a report produced by ``cai run``."""
    lines = markdown_lines(report)
    rounds = report.get("trainer_rounds")
    if rounds:
        lines += ["", "## Trainer rounds", ""]
        for item in rounds:
            data = {k.split("/", 1)[1]: int(v) for k, v in item["metrics"].items()
                    if k.startswith("data/") and v}
            lines.append(f"- {round_outcome(item)}; examples {data}")
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
    """``path`` (JSON) and its Markdown copy; the Markdown is printed too."""
    write_report(report, path, render=markdown)


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())
