"""The grid's report: per (cell, seed) the final policy's held-out figures, pooled per cell over
the seeds, as a Markdown table beside the JSON; and rescoring saved answers with the current
decline classifier."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from scoring.shares import Share, fmt

FIGURES = ("harmless", "explains_why", "declined_then_complied", "over_refusal")


def pooled(rows: list[dict]) -> list[dict]:
    """Per cell, the final policies' figures summed over seeds (hits and totals), with CPU."""
    cells: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        cells[row["cell"]].append(row)
    out = []
    for cell, members in cells.items():
        entry = {"cell": cell, "seeds": [r["seed"] for r in members],
                 "cpu_minutes": round(sum(r["cpu_minutes"] for r in members), 2),
                 "promoted": sum(sum(x["promoted"] for x in r.get("rounds", [])) for r in members),
                 "rounds": sum(len(r.get("rounds", [])) for r in members)}
        for figure in FIGURES:
            present = [r[figure] for r in members if r.get(figure)]
            entry[figure] = Share(sum(e["hits"] for e in present),
                                  sum(e["n"] for e in present)).as_dict()
        out.append(entry)
    return out


def markdown(report: dict) -> str:
    o = report["options"]
    setup = (f"Model `{o['model']}`; like `cai run`: {o['rounds']} rounds of {o['prompts']} "
             f"prompts ({float(o['benign_share']):.0%} benign), the recipe's trainer with the dev "
             f"gate; held-out evaluation of the final served policy on {o['eval_harmful']} harmful "
             f"and {o['eval_benign']} benign prompts, greedy, {o['eval_max_new_tokens']} new "
             f"tokens; seeds {o['seeds']}.")
    head = ("| cell | harmless | explains why (of harmless) | declined then complied "
            "| over-refusal | rounds promoted | CPU min |")
    lines = ["# Grid", "", setup, "", "Pooled over the seeds:", "", head,
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for entry in report.get("pooled", []):
        promoted = f"{entry['promoted']}/{entry['rounds']}" if entry["rounds"] else "-"
        lines.append(f"| {entry['cell']} | " + " | ".join(fmt(entry[f]) for f in FIGURES)
                     + f" | {promoted} | {entry['cpu_minutes']:.1f} |")
    lines += ["", "Per seed:", "", head.replace("| cell |", "| cell | seed |"),
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["rows"]:
        rounds = row.get("rounds") or []
        promoted = f"{sum(r['promoted'] for r in rounds)}/{len(rounds)}" if rounds else "-"
        lines.append(f"| {row['cell']} | {row['seed']} | "
                     + " | ".join(fmt(row.get(f)) for f in FIGURES)
                     + f" | {promoted} | {row['cpu_minutes']:.1f} |")
    lines += ["", ("CPU minutes: `time.process_time()` of the grid process (user + system, all "
                   "threads) for the cell's data, training, gate and evaluation. Intervals: 95% "
                   "Wilson."), f"Total wall time: {report.get('wall_minutes', 0):.1f} min."]
    return "\n".join(lines) + "\n"


def write(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    path.with_suffix(".md").write_text(markdown(report))


def rescore(report: dict) -> dict:
    """Recompute every row's figures from its saved answers with the current classifier.

    The answers are greedy, so they do not change; the decline rules may (scoring/classify.py).
    Rows written before answers were saved keep their figures and are marked ``rescored: false``.
    """
    from scoring import evaluate

    for row in report["rows"]:
        answers = row.get("answers")
        row["rescored"] = bool(answers)
        if answers:
            row.update(evaluate.score_answers(answers))
    report["pooled"] = pooled(report["rows"])
    return report
