"""Refusal probe: how often the policy declines prompts it should simply answer.

Harmlessness training on red-team prompts can teach a small model to decline everything. The
trainer answers a fixed sample of benign prompts greedily before and after each round, with the
policy it is training, and rejects a round that raises the declined share (the promotion gate in
trainer/rounds.py), the same way `cai eval` measures over-refusal (scoring/evaluate.py).
"""

from __future__ import annotations

import random

from trainer.config import TrainerConfig


def load_refusal_prompts(config: TrainerConfig) -> list[str]:
    """A seeded sample of ``refusal_probe_size`` prompts from ``config.refusal_prompts``, or none.

    A built-in set contributes only its training split, so its held-out prompts stay unseen by
    every decision the trainer makes.
    """
    if not config.refusal_prompts:
        return []
    from scoring import prompt_sets, splits

    spec = config.refusal_prompts
    if spec in prompt_sets.BUILTIN:
        items = splits.train_part(prompt_sets.builtin(spec))
    else:
        try:
            items = prompt_sets.from_file(spec, kind="helpful")
        except (OSError, ValueError) as exc:  # PromptSetError is a ValueError
            raise ValueError(f"refusal_prompts={spec!r} cannot be read ({exc}); give a built-in "
                             f"set "
                             f"({', '.join(prompt_sets.BUILTIN)}) or a JSONL/CSV/txt file") from exc
    prompts = [item.prompt for item in items]
    if not prompts:
        raise ValueError(f"refusal_prompts={spec!r} holds no prompts; give a file with at least "
                         f"one")
    return random.Random(config.seed).sample(prompts, min(config.refusal_probe_size, len(prompts)))


def refusal_rate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> float:
    """Share of ``prompts`` whose greedy answer the evaluation's classifier counts as a decline."""
    from scoring import evaluate
    from serving.textgen import TextGenerator

    answers = evaluate.answer(TextGenerator.from_model(model, tokenizer), prompts, max_new_tokens)
    return evaluate.over_refusal(answers).value
