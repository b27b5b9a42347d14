"""The strategy grid's report: the Markdown table beside the JSON, and rescoring saved answers
with the current decline classifier."""

from __future__ import annotations

import json
from pathlib import Path

from scoring.shares import fmt


def markdown(report: dict) -> str:
    o = report["options"]
    setup = (f"Model `{o['model']}`, {o['prompts']} training prompts ({o['benign_share']:.0%} "
             f"benign) over {o['iterations']} iteration(s), {o['rounds']} revision round(s), seed "
             f"{o['seed']}; per iteration up to {report['steps']['sft']} SFT and "
             f"{report['steps']['dpo']} DPO steps of {o['batch_size']} (LoRA, lr {o['lr']}); "
             f"held-out evaluation: {report['eval']['harmful']} harmful, "
             f"{report['eval']['benign']} benign prompts, greedy, {o['eval_max_new_tokens']} new "
             "tokens.")
    lines = [
        "# Strategy grid", "", setup, "",
        ("| cell | harmless (declines) | explains why (of declines) | over-refusal (benign) | data "
         "(SFT changed / pref) | steps SFT / DPO | CPU min |"),
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        data = row.get("data")
        shown = (" + ".join(f"{d['sft_changed']}/{d['sft']} / {d['preferences']}" for d in data)
                 if data else "-")
        steps = row.get("steps_per_iteration")
        steps = f"{steps['sft']} / {steps['dpo']}" if steps else "-"
        lines.append(f"| {row['name']} | {fmt(row['harmless'])} | {fmt(row['explains_why'])} | "
                     f"{fmt(row['over_refusal'])} | {shown} | {steps} | {row['cpu_minutes']:.1f} |")
    lines += ["", ("CPU minutes: `time.process_time()` of the grid process (user + system, all "
                   "threads) for the cell's data generation, training and evaluation; no child "
                   "processes. Intervals: 95% Wilson."),
              ("Data column: per iteration, SFT records whose answer differs from the initial one "
               "/ all SFT records / preference records."),
              f"Total wall time: {report.get('wall_minutes', 0):.1f} min."]
    return "\n".join(lines) + "\n"


def write(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    path.with_suffix(".md").write_text(markdown(report))


def rescore(report: dict) -> dict:
    """Recompute every row's figures from its saved answers with the current classifier.

    The answers are greedy, so they do not change; the decline rules may (scoring/classify.py). Rows
    written before answers were saved keep their figures and are marked ``rescored: false``.
    """
    from scoring import evaluate

    for row in report["rows"]:
        answers = row.get("answers")
        row["rescored"] = bool(answers)
        if not answers:
            continue
        row.update(evaluate.score_answers(answers))
    return report
