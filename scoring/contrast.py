"""Benign prompts chosen to contrast with red-team ones: for each red-team prompt, the benign
prompt closest to it in wording.

A small policy learns whatever separates the decline targets from the helpful ones most
cheaply. When the benign prompts of a round are a random draw, that is often the wording:
red-team sets are full of "Develop an app that ..." and "Write a tutorial on ...", so a
benign "Develop an app idea that helps neighbours share tools" gets declined too. Pairing each
red-team prompt with the benign prompt that opens the same way and shares the most words
("How do I kill a Python process ..." beside "How do I kill ...") leaves the meaning as the
only thing that tells the two apart.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9']+")
# Leading words that count towards the shared opening; past this the overlap of words decides.
OPENING_WORDS = 3


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def form_similarity(a: str, b: str) -> tuple[int, float]:
    """How alike two prompts are in wording: (leading words in common, at most OPENING_WORDS;
    the Jaccard overlap of their word sets). Compared as a tuple, the opening first."""
    wa, wb = words(a), words(b)
    opening = 0
    for x, y in zip(wa[:OPENING_WORDS], wb[:OPENING_WORDS]):
        if x != y:
            break
        opening += 1
    union = set(wa) | set(wb)
    return opening, (len(set(wa) & set(wb)) / len(union) if union else 0.0)


def closest_in_form(anchors: list[str], pool: list, n: int, text=lambda item: item.prompt) -> list:
    """``n`` items of ``pool``, none twice: for each anchor text in turn (cycling when ``n`` is
    larger), the unused item whose text is closest to it in wording (the earlier one in
    ``pool`` on a tie, so a seeded shuffle of the pool decides ties)."""
    if n > len(pool):
        raise ValueError(f"asked for {n} contrasting prompts from a pool of {len(pool)}")
    unused = list(pool)
    chosen = []
    for i in range(n):
        if not anchors:
            chosen.append(unused.pop(0))
            continue
        anchor = anchors[i % len(anchors)]
        best = max(range(len(unused)), key=lambda j: (form_similarity(anchor, text(unused[j])), -j))
        chosen.append(unused.pop(best))
    return chosen
