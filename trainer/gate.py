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
  creep upward one tolerance at a time;
* where turned on (the RL recipe), boilerplate (answers repeated word for word for another dev
  prompt) rises by no more than ``gate_boilerplate_tolerance`` in the round and the mean answer
  length moves by no more than ``gate_length_tolerance`` (relative) from the serving policy's:
  the ways a policy that games a learnt reward model shows it. They compare with the serving
  policy, not the first one: the SFT revisions alone make declines alike over the rounds, and
  what these checks are for is a round that jumps.

The dev prompts come from the dev split (``scoring.splits``), which nothing trains on and no
report uses, so the gate's choices cannot flatter the held-out figures the report gives.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
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


def boilerplate(answers: list[str]) -> Share:
    """Answers that repeat, word for word (case and spacing aside), the answer to another
    prompt: an answer that would fit any question."""
    normal = [" ".join(a.lower().split()) for a in answers]
    counts = Counter(normal)
    return Share(sum(1 for a in normal if a and counts[a] > 1), len(normal))


def answer_words(answers: list[str]) -> dict:
    """Mean words per answer (``value``) over ``n`` answers."""
    n = len(answers)
    return {"value": sum(len(a.split()) for a in answers) / n if n else None, "n": n}


def measure(generator, dev: DevSet, max_new_tokens: int,
            benign_max_new_tokens: int = 0) -> tuple[dict[str, dict], list[dict]]:
    """Greedy answers of ``generator`` (a TextGenerator) to the dev prompts, scored: (figures,
    the answers with their verdicts, kept in the round's folder for reading). Benign prompts
    get ``benign_max_new_tokens`` tokens when it is set, the harmful ones ``max_new_tokens``."""
    from scoring.classify import classify
    from scoring.evaluate import answer

    harmful = answer(generator, dev.harmful, max_new_tokens)
    benign = answer(generator, dev.benign, benign_max_new_tokens or max_new_tokens)
    records = [{"kind": kind, "prompt": prompt, "answer": text, **classify(text).__dict__}
               for kind, prompts, texts in (("harmful", dev.harmful, harmful),
                                            ("helpful", dev.benign, benign))
               for prompt, text in zip(prompts, texts)]
    answers = harmful + benign
    result = figures(harmful, benign)
    result["boilerplate"] = boilerplate(answers).as_dict()
    result["answer_words"] = answer_words(answers)
    return result, records


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
    return reasons + _guards(before, after, config)


def _guards(before: dict[str, dict], after: dict[str, dict], config: TrainerConfig) -> list[str]:
    """Boilerplate and answer length against the serving policy's (figures measured before these
    checks existed lack them: then there is nothing to compare)."""
    reasons = []
    if (config.gate_boilerplate_tolerance < 1.0 and "boilerplate" in before
            and "boilerplate" in after):
        was, now = before["boilerplate"]["value"] or 0.0, after["boilerplate"]["value"] or 0.0
        if now > was + config.gate_boilerplate_tolerance + 1e-9:
            reasons.append(f"dev boilerplate rose {was:.3f} -> {now:.3f} (> "
                           f"{config.gate_boilerplate_tolerance})")
    words_was = (before.get("answer_words") or {}).get("value")
    words_now = (after.get("answer_words") or {}).get("value")
    if config.gate_length_tolerance > 0 and words_was and words_now is not None:
        change = words_now / words_was - 1
        if abs(change) > config.gate_length_tolerance + 1e-9:
            reasons.append(f"dev answers went from {words_was:.1f} to {words_now:.1f} words on "
                           f"average ({change:+.0%}, more than "
                           f"{config.gate_length_tolerance:.0%})")
    return reasons
