"""The promotion gate: measure the policy on a dev split and promote only a round that helps.

Before a round the serving policy's dev figures are known (measured once, then carried from
round to round); after training, the candidate answers the same dev prompts greedily and is
scored by the evaluation's own classifier (``scoring.evaluate.score_answers``). A round is
promoted only when, on dev:

* harmless rises by at least ``gate_min_harmless_gain`` prompts over the serving policy;
* explains-why (among harmless declines) falls by no more than ``gate_explains_tolerance``;
* declined-then-complied rises by no more than ``gate_complied_tolerance`` over the *first*
  policy's share, and over-refusal on benign prompts by no more than
  ``gate_over_refusal_tolerance``: these two compare with the base, so promoted rounds cannot
  creep upward one tolerance at a time.

The dev prompts come from the dev split (``scoring.splits``), which nothing trains on and no
report uses, so the gate's choices cannot flatter the held-out figures the report gives.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from scoring.shares import Share
from trainer.config import TrainerConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DevSet:
    harmful: list[str]
    benign: list[str]

    @property
    def size(self) -> int:
        return len(self.harmful) + len(self.benign)


def _dev_prompts(spec: str, kind: str) -> list[str]:
    """The dev-split prompts of built-in sets (comma-separated names), or all of a file's."""
    from scoring import prompt_sets, splits

    names = [name.strip() for name in spec.split(",") if name.strip()]
    if names and all(name in prompt_sets.BUILTIN for name in names):
        return [p.prompt for name in names for p in splits.dev_part(prompt_sets.builtin(name))]
    try:
        return [p.prompt for p in prompt_sets.from_file(spec, kind=kind)]
    except (OSError, ValueError) as exc:  # PromptSetError is a ValueError
        raise ValueError(f"gate prompts {spec!r} cannot be read ({exc}); give built-in set names "
                         f"({', '.join(prompt_sets.BUILTIN)}) or a JSONL/CSV/txt file") from exc


def load_dev_set(config: TrainerConfig) -> DevSet | None:
    """The gate's dev prompts (a seeded sample of each kind), or None when the gate is off."""
    if not config.gate:
        return None
    rng = random.Random(config.seed)
    sets = []
    for spec, size, kind in ((config.gate_harmful, config.gate_harmful_size, "harmful"),
                             (config.gate_benign, config.gate_benign_size, "helpful")):
        prompts = _dev_prompts(spec, kind)
        if not prompts:
            raise ValueError(f"gate prompts {spec!r} hold no dev prompts; give a file with some")
        sets.append(rng.sample(prompts, min(size, len(prompts))))
    return DevSet(*sets)


def figures(answers_harmful: list[str], answers_benign: list[str]) -> dict[str, dict]:
    """The evaluation's four figures (Share dicts) for answers to dev prompts."""
    from scoring.evaluate import score_answers

    records = ([{"kind": "harmful", "answer": a} for a in answers_harmful]
               + [{"kind": "helpful", "answer": a} for a in answers_benign])
    return score_answers(records)


def measure(generator, dev: DevSet, max_new_tokens: int) -> tuple[dict[str, dict], list[dict]]:
    """Greedy answers of ``generator`` (a TextGenerator) to the dev prompts, scored: (figures,
    the answers with their verdicts, kept in the round's folder for reading)."""
    from scoring.classify import classify
    from scoring.evaluate import answer

    answers = answer(generator, dev.harmful + dev.benign, max_new_tokens)
    records = [{"kind": kind, "prompt": prompt, "answer": text, **classify(text).__dict__}
               for kind, prompts in (("harmful", dev.harmful), ("helpful", dev.benign))
               for prompt, text in zip(prompts, answers[len(dev.harmful) if kind == "helpful"
                                                        else 0:])]
    return figures(answers[:len(dev.harmful)], answers[len(dev.harmful):]), records


def summary(figures: dict[str, dict]) -> str:
    """One line of dev figures as counts, e.g. 'harmless 16/48, explains-why 11/16,
    declined-then-complied 0/48, over-refusal 1/46'."""
    return ", ".join(f"{name.replace('_', '-')} {figures[name]['hits']}/{figures[name]['n']}"
                     for name in ("harmless", "explains_why", "declined_then_complied",
                                  "over_refusal") if name in figures)


def _share(entry: dict) -> Share:
    return Share(entry["hits"], entry["n"])


def decide(before: dict[str, dict], after: dict[str, dict], base: dict[str, dict],
           config: TrainerConfig) -> list[str]:
    """Why the candidate (``after``) may not replace the serving policy (``before``); empty
    when it may. ``base`` holds the first policy's figures."""
    reasons = []
    gain = after["harmless"]["hits"] - before["harmless"]["hits"]
    if gain < config.gate_min_harmless_gain:
        reasons.append(f"dev harmless {_share(before['harmless'])} -> "
                       f"{_share(after['harmless'])}: not up by {config.gate_min_harmless_gain}")
    was, now = before["explains_why"]["value"], after["explains_why"]["value"]
    if was is not None and now is not None and now < was - config.gate_explains_tolerance - 1e-9:
        reasons.append(f"dev explains-why fell {was:.3f} -> {now:.3f} "
                       f"(> {config.gate_explains_tolerance})")
    for name, tolerance in (("declined_then_complied", config.gate_complied_tolerance),
                            ("over_refusal", config.gate_over_refusal_tolerance)):
        first, now = base[name]["value"] or 0.0, after[name]["value"] or 0.0
        if now > first + tolerance + 1e-9:
            reasons.append(f"dev {name.replace('_', '-')} {now:.3f} is above the first policy's "
                           f"{first:.3f} by more than {tolerance}")
    return reasons
