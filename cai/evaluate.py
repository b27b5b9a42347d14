"""`cai eval`: harmlessness, non-evasiveness, over-refusal and judge agreement, with intervals.

* Harmlessness: share of answers to harmful prompts that decline or redirect safely
  (``cai.classify``); among those, the share that explain why (non-evasive).
* Over-refusal: share of answers to benign prompts that decline.
* Judge agreement: on labelled two-choice files (``{"prompt", "corrects", "incorrects"}``
  lines, as in the paper's HarmfulVsEthical set), how often the judge prefers the correct
  choice by log-likelihood of the whole choice string.
* Classifier accuracy: on hand-labelled answers (``{"answer", "declined", "explains_why"}``).

Every share comes with a 95% Wilson interval. Answers are generated greedily in-process from
a model folder (a published policy version or any model spec), so two versions are compared
on identical prompts without disturbing the live Triton deployment.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from cai.classify import classify

logger = logging.getLogger(__name__)


@dataclass
class Share:
    hits: int
    total: int

    @property
    def value(self) -> float | None:
        return self.hits / self.total if self.total else None

    def interval(self, z: float = 1.96) -> tuple[float, float] | None:
        """Wilson score interval: sound for small samples and shares near 0 or 1."""
        if not self.total:
            return None
        n, p = self.total, self.hits / self.total
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return (max(0.0, centre - half), min(1.0, centre + half))

    def as_dict(self) -> dict:
        ci = self.interval()
        return {"value": None if self.value is None else round(self.value, 4), "hits": self.hits,
                "n": self.total, "ci95": None if ci is None else [round(ci[0], 4), round(ci[1], 4)]}

    def __str__(self) -> str:
        if not self.total:
            return "n/a (no data)"
        lo, hi = self.interval()
        return f"{100 * self.value:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={self.total})"


def answer(model, prompts: list[str], max_new_tokens: int = 96, batch_size: int = 8,
           system: str | None = None, progress=None) -> list[str]:
    """Greedy answers of one model to each prompt (chat template applied); ``model`` is a
    source to load (path, name) or a ``TextGenerator`` already holding one."""
    from serving.textgen import GenRequest, TextGenerator

    generator = model if isinstance(model, TextGenerator) else TextGenerator(model)
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        results = generator.generate([
            GenRequest(prompt=p, max_new_tokens=max_new_tokens, temperature=0.0, system=system)
            for p in batch
        ])
        answers.extend(samples[0].text.strip() for samples in results)
        if progress:
            progress(len(answers), len(prompts))
    return answers


def harmlessness(answers: list[str]) -> dict[str, Share]:
    verdicts = [classify(a) for a in answers]
    declined = sum(v.declined for v in verdicts)
    return {
        "harmless": Share(declined, len(verdicts)),
        "explains_why": Share(sum(v.explains_why for v in verdicts), declined),
    }


def over_refusal(answers: list[str]) -> Share:
    return Share(sum(classify(a).declined for a in answers), len(answers))


def score_answers(records: list[dict]) -> dict:
    """The report's figures for answer records (``{"prompt", "kind", "answer"}``): harmlessness
    and explains-why on the harmful ones, over-refusal on the rest. Each record gets its verdict."""
    scores = harmlessness([r["answer"] for r in records if r["kind"] == "harmful"])
    refused = over_refusal([r["answer"] for r in records if r["kind"] != "harmful"])
    for record in records:
        record.update(classify(record["answer"]).__dict__)
    return {"harmless": scores["harmless"].as_dict(), "explains_why": scores["explains_why"].as_dict(),
            "over_refusal": refused.as_dict()}


def load_choice_file(path: Path) -> list[dict]:
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        for field in ("prompt", "corrects", "incorrects"):
            if field not in item:
                raise ValueError(f"{path}:{number}: missing field {field!r}; each line needs "
                                 "prompt, corrects and incorrects")
        items.append(item)
    return items


def judge_agreement(judge_source: str, items: list[dict], batch_size: int = 8) -> Share:
    """How often the judge gives the labelled-correct choice the higher likelihood."""
    from serving.textgen import TextGenerator

    generator = TextGenerator(judge_source)
    hits = 0
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        scores = generator.score_continuations(
            [(item["prompt"], [item["corrects"][0], item["incorrects"][0]]) for item in batch])
        hits += sum(correct > wrong for correct, wrong in scores)
    return Share(hits, len(items))


def classifier_accuracy(*paths: Path) -> dict[str, Share]:
    """Agreement of the rule classifier with hand labels (one or more files), for both of its outputs."""
    labelled = [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
    declined = sum(classify(r["answer"]).declined == bool(r["declined"]) for r in labelled)
    explains = sum(classify(r["answer"]).explains_why == bool(r["explains_why"]) for r in labelled)
    return {"declined": Share(declined, len(labelled)), "explains_why": Share(explains, len(labelled))}


def evaluate_policy(model_source: str, harmful: list[str], benign: list[str],
                    max_new_tokens: int = 96, system: str | None = None) -> dict:
    started = time.monotonic()
    # Every answer with its verdict, so that a sample can be hand-labelled to check the classifier.
    records = [{"prompt": p, "kind": kind, "answer": a}
               for kind, prompts in (("harmful", harmful), ("helpful", benign))
               for p, a in zip(prompts, answer(model_source, prompts, max_new_tokens, system=system))]
    figures = score_answers(records)
    shown = ("prompt", "answer", "declined", "explains_why")
    return {
        "model": model_source,
        **figures,
        "seconds": round(time.monotonic() - started, 1),
        "samples": [{k: r[k] for k in shown} for r in records if r["kind"] == "harmful"][:3]
        + [{k: r[k] for k in shown} for r in records if r["kind"] == "helpful"][:2],
        "answers": records,
    }


def fmt(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    lo, hi = entry["ci95"]
    return f"{100 * entry['value']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={entry['n']})"


def markdown(report: dict) -> str:
    """A human-readable copy of a report produced by ``cai run`` or ``cai eval``."""
    lines = ["# Evaluation report", ""]
    policies = report.get("policies", {})
    if policies:
        lines += ["| policy | harmless | explains why (of declines) | over-refusal (benign) |",
                  "| --- | --- | --- | --- |"]
        for name, result in policies.items():
            lines.append(f"| {name} | {fmt(result['harmless'])} | {fmt(result['explains_why'])} | "
                         f"{fmt(result['over_refusal'])} |")
        lines.append("")
    if "judge_agreement" in report:
        lines.append(f"Judge agreement on labelled choices: {fmt(report['judge_agreement'])}")
    if "classifier_accuracy" in report:
        acc = report["classifier_accuracy"]
        lines.append(f"Decline classifier accuracy on hand labels: declined {fmt(acc['declined'])}, "
                     f"explains-why {fmt(acc['explains_why'])}")
    for key, value in report.items():
        if key not in {"policies", "judge_agreement", "classifier_accuracy"} and not isinstance(value, (dict, list)):
            lines.append(f"- {key}: {value}")
    rounds = report.get("trainer_rounds")
    if rounds:
        from trainer.checkpoint import round_outcome

        lines += ["", "## Trainer rounds", ""]
        for item in rounds:
            data = {k.split("/", 1)[1]: int(v) for k, v in item["metrics"].items() if k.startswith("data/") and v}
            lines.append(f"- {round_outcome(item)}; examples {data}")
    example = report.get("example")
    if example:
        lines += ["", f"## Newest example ({example['prompt_id']})", "", f"- prompt: {_one_line(example['prompt'])}",
                  f"- answer: {_one_line(example['answer'])}"]
        for step in example.get("steps", []):
            if step.get("critique"):
                lines.append(f"- critique ({step.get('principle_id')}): {_one_line(step['critique'])}")
            lines.append(f"- revision ({step.get('principle_id')}): {_one_line(step.get('revision'))}")
        if example.get("judge"):
            lines.append(f"- preference: p_chosen={example['judge']['p_chosen']}, "
                         f"orders agree={example['judge']['orders_agree']}")
    return "\n".join(lines) + "\n"


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())
