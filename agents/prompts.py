"""Prompt templates for the critic, the reviser and the judge, with few-shot examples.

For small models such as SmolLM2 the few-shot examples work better as plain text continuation
(``Human:`` / ``Assistant:`` / ``CritiqueRequest:`` ...) than as chat turns (DESIGN.md), so the
critic and reviser get raw text (``chat=False``) that ends where the model should continue.
The few-shot block comes first and never changes, so a server can cache its KV prefix.

User text (prompts, and model answers, which may echo them) is untrusted: ``escape`` makes sure
it cannot start a new turn or fake a section. It normalises line breaks, collapses blank lines
(every section marker in these templates follows a blank line), and defuses role markers
(``Human:``, ``Revision:`` ...) and option labels (``(A)``) wherever they occur.
"""

from __future__ import annotations

import re
import unicodedata

from agents.constitution import (
    ComparisonPrinciple,
    Constitution,
    CritiqueExample,
    CritiquePrinciple,
)

MARKERS = ("Human", "Assistant", "CritiqueRequest", "Critique", "RevisionRequest", "Revision",
           "Options", "The answer is", "H", "A")
EXAMPLE_SEPARATOR = "\n\n-----"
# Where generation must stop: the model starting the next section or the next example.
STOP = ("\n\nHuman:", "\n\nAssistant:", "\n\nCritiqueRequest:", "\n\nCritique:",
        "\n\nRevisionRequest:", "\n\nRevision:", "\n-----")
JUDGE_CHOICES = (" (A)", " (B)")

_MARKER_RE = re.compile(
    r"\b(" + "|".join(re.escape(m) for m in sorted(MARKERS, key=len, reverse=True)) + r")(\s*):",
    re.IGNORECASE)
_OPTION_RE = re.compile(r"\(\s*([A-Za-z])\s*\)")
_BLANK_LINES = re.compile(r"\n\s*\n+")
_DASH_RULE = re.compile(r"-{3,}")


def escape(text: str) -> str:
    """Make untrusted text safe to place inside a template section (see module docstring)."""
    text = unicodedata.normalize("NFKC", text)  # folds look-alike colons and full-width letters
    text = (text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
            .replace("\u2029", "\n"))
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    text = _BLANK_LINES.sub("\n", text)
    text = _MARKER_RE.sub(lambda m: f"{m.group(1)} -", text)
    text = _OPTION_RE.sub(lambda m: f"[{m.group(1)}]", text)
    text = _DASH_RULE.sub("--", text)
    return text.strip()


def _dialogue(prompt: str, response: str, history=(), trusted: bool = False) -> str:
    clean = (lambda s: s.strip()) if trusted else escape
    parts = []
    for turn in history:
        parts.append(f"Human: {clean(turn.human)}\n\nAssistant: {clean(turn.assistant)}")
    parts.append(f"Human: {clean(prompt)}\n\nAssistant: {clean(response)}")
    return "\n\n".join(parts)


def _example_block(constitution: Constitution, example: CritiqueExample) -> str:
    critique_request, revision_request = constitution.example_requests(example)
    return (
        _dialogue(example.prompt, example.response, example.history, trusted=True)
        + f"\n\nCritiqueRequest: {critique_request}\n\nCritique: {example.critique.strip()}"
        + f"\n\nRevisionRequest: {revision_request}\n\nRevision: {example.revision.strip()}"
    )


def _examples(constitution: Constitution, block) -> str:
    """Every critique/revision few-shot example rendered by ``block``, separated."""
    return "".join(block(constitution, ex) + EXAMPLE_SEPARATOR + "\n\n"
                   for ex in constitution.few_shot.critique_revision)


def few_shot_prefix(constitution: Constitution) -> str:
    """The constant part shared by every critique and revision prompt."""
    return _examples(constitution, _example_block)


def critique_prompt(constitution: Constitution, principle: CritiquePrinciple, prompt: str,
                    response: str) -> str:
    """Text the critic continues; it ends with ``Critique:``."""
    return (few_shot_prefix(constitution) + _dialogue(prompt, response)
            + f"\n\nCritiqueRequest: {principle.critique}\n\nCritique:")


def revision_prompt(constitution: Constitution, principle: CritiquePrinciple, prompt: str,
                    response: str, critique: str) -> str:
    """Text the reviser continues; it ends with ``Revision:``."""
    return (critique_prompt(constitution, principle, prompt, response) + f" {escape(critique)}"
            + f"\n\nRevisionRequest: {principle.revision}\n\nRevision:")


def _direct_block(constitution: Constitution, example: CritiqueExample) -> str:
    _, revision_request = constitution.example_requests(example)
    return (_dialogue(example.prompt, example.response, example.history, trusted=True)
            + f"\n\nRevisionRequest: {revision_request}\n\nRevision: {example.revision.strip()}")


def direct_prefix(constitution: Constitution) -> str:
    """The constant part of every critique-free ("direct") revision prompt."""
    return _examples(constitution, _direct_block)


def direct_revision_prompt(constitution: Constitution, principle: CritiquePrinciple, prompt: str,
                           response: str) -> str:
    """Text the reviser continues under the "direct" strategy: no critique, straight to
    ``Revision:``."""
    return (direct_prefix(constitution) + _dialogue(prompt, response)
            + f"\n\nRevisionRequest: {principle.revision}\n\nRevision:")


def _comparison_block(prompt: str, principle_text: str, first: str, second: str,
                      trusted: bool) -> str:
    clean = (lambda s: s.strip()) if trusted else escape
    return (
        "Consider the following conversation between a human and an assistant:\n\n"
        f"Human: {clean(prompt)}\n\n"
        f"{principle_text.strip()}\nOptions:\n"
        f"(A) {clean(first)}\n(B) {clean(second)}\nThe answer is:"
    )


def comparison_prompt(constitution: Constitution, principle: ComparisonPrinciple, prompt: str,
                      first: str, second: str) -> str:
    """Multiple-choice question for the judge; score the continuations ``JUDGE_CHOICES``.

    Few-shot examples alternate which option is the better one, so the examples themselves
    do not teach a position bias.
    """
    blocks = []
    for i, ex in enumerate(constitution.few_shot.comparison):
        text = (constitution.comparison_by_id[ex.principle].text if ex.principle
                else principle.text)
        a, b, answer = (ex.better, ex.worse, "A") if i % 2 == 0 else (ex.worse, ex.better, "B")
        blocks.append(_comparison_block(ex.prompt, text, a, b, trusted=True) + f" ({answer})")
    blocks.append(_comparison_block(prompt, principle.text, first, second, trusted=False))
    return "\n\n".join(blocks)


def clean_generation(text: str) -> str:
    """Cut a continuation at the first section marker the model started on its own."""
    cut = len(text)
    for stop in STOP:
        pos = text.find(stop)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut].strip()


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def copies_example(constitution: Constitution, text: str, chars: int = 60) -> bool:
    """True when a generation repeats a few-shot example's critique or revision.

    Small models sometimes copy an example instead of answering; such text has nothing to do
    with the prompt and must not become training data.
    """
    mine = _normalise(text)
    if not mine:
        return False
    for ex in constitution.few_shot.critique_revision:
        for known in (ex.revision, ex.critique):
            head = _normalise(known)[:chars]
            if head and (mine.startswith(head)
                         or head.startswith(mine[:chars]) and len(mine) >= 20):
                return True
    return False
