"""Evaluation reports: JSON with a Markdown copy beside it.

``markdown`` renders what ``cai eval`` measures (the policies' harmlessness, explains-why and
over-refusal, judge agreement, a preference model's ranking, classifier accuracy, and any plain
fields); ``cai run`` adds its
own sections on top of ``markdown_lines`` (cai/report.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from scoring.shares import fmt

SECTIONS = {"policies", "judge_agreement", "reward_agreement", "classifier_accuracy"}


def markdown_lines(report: dict) -> list[str]:
    """The evaluation part of a report as Markdown lines."""
    lines = ["# Evaluation report", ""]
    policies = report.get("policies", {})
    if policies:
        lines += [("| policy | harmless | explains why (of harmless declines) "
                  "| declined then complied | over-refusal (benign) |"),
                  "| --- | --- | --- | --- | --- |"]
        for name, result in policies.items():
            lines.append(f"| {name} | {fmt(result['harmless'])} | {fmt(result['explains_why'])} "
                         f"| {fmt(result.get('declined_then_complied'))} "
                         f"| {fmt(result['over_refusal'])} |")
        lines.append("")
    if "judge_agreement" in report:
        lines.append(f"Judge agreement on labelled choices: {fmt(report['judge_agreement'])}")
    if "reward_agreement" in report:
        agreement = report["reward_agreement"]
        lines.append(f"Preference model: ranks the ethical conversation above the harmful one in "
                     f"{100 * (agreement['value'] or 0):.1f}% of {agreement['pairs']} pairs "
                     f"({agreement['ethical']} ethical, {agreement['harmful']} harmful; 50% is "
                     "chance)")
    if "classifier_accuracy" in report:
        acc = report["classifier_accuracy"]
        shown = ", ".join(f"{name.replace('_', '-')} {fmt(acc[name])}"
                          for name in ("declined", "complied", "harmless", "explains_why")
                          if name in acc)
        lines.append(f"Classifier accuracy on held-out hand labels: {shown}")
    for key, value in report.items():
        if key not in SECTIONS and not isinstance(value, (dict, list)):
            lines.append(f"- {key}: {value}")
    return lines


def markdown(report: dict) -> str:
    """A human-readable copy of a report produced by ``cai eval``."""
    return "\n".join(markdown_lines(report)) + "\n"


def write_report(report: dict, path: Path, render: Callable[[dict], str] = markdown) -> None:
    """Write ``path`` (JSON) and its Markdown copy beside it, and print the Markdown."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    path.with_suffix(".md").write_text(render(report))
    print(render(report))
    print(f"report: {path} and {path.with_suffix('.md')}")
