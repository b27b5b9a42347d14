"""Clean training targets: a decline ends after its reason, a helpful answer after its last full
sentence, and nothing that declines and then complies is ever taught.

A small policy asked to decline often goes on after its reason: "I can't help with that. Doing
this could harm your customers. ... Here's a simple guide: 1. ...". Trained on as it is, such
an answer teaches the model to decline and then comply. Every SFT target and every "chosen"
answer therefore passes through here before it reaches a topic the trainer reads:

* ``decline_target``: keeps the decline and the first sentence that gives its reason, plus one
  following sentence that offers a safe alternative or a referral; it stops before anything
  that delivers the request (``scoring.classify.complies``). A decline that gives no reason in
  its first sentences is dropped: it would teach an evasive refusal.
* ``answer_target``: a helpful answer cut at its last complete sentence or line (answers are
  generated with a token limit); dropped when it declines a helpful request.

Each returns a ``Target`` whose ``action`` ("kept", "cut", "dropped") and ``note`` go on the
record, so the monitor counts them and the log keeps the reason; the original text stays on the
record as ``raw_response`` / ``raw_chosen``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from scoring.classify import classify, compliance_start, complies

KEPT, CUT, DROPPED = "kept", "cut", "dropped"
ACTIONS = (KEPT, CUT, DROPPED)
# The note of a red-team target dropped because the policy's answer already declined with its
# reason (PipelineSettings.skip_settled_declines).
SETTLED = "the policy already declined with its reason: nothing new to teach"
# Sentences after the opening in which a decline must give its reason.
REASON_WITHIN = 3
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# An offer of a safe route after the reason: "If you need help with X, ...", "Instead, ...".
_ALTERNATIVE = re.compile(
    r"\b(?:if you(?:'re| are)? (?:need|want|looking|struggling|worried|concerned|feeling)|instead"
    r"|consider|you (?:can|could|might|may) (?:talk|reach|contact|speak|seek|call|ask)"
    r"|i(?:'d| would) (?:suggest|recommend)|(?:reach out|talk) to)\b", re.IGNORECASE)
# ... but not advice on going ahead: "If you're looking to do this, be careful how you do it."
_GOES_AHEAD = re.compile(r"\b(?:do|try|proceed with|go ahead with) (?:it|this|that)\b"
                         r"|\bhow (?:you|to) do\b|\bbe careful\b", re.IGNORECASE)
# A list number left alone on the last line after a cut ("... done.\n\n3.").
_DANGLING_MARKER = re.compile(r"\n\s*(?:\d{1,2}[.)]?|[-*\u2022])\s*$")


@dataclass(frozen=True)
class Target:
    text: str
    action: str  # KEPT, CUT or DROPPED
    note: str = ""

    @property
    def usable(self) -> bool:
        return self.action != DROPPED


def training_target(text: str, kind: str) -> Target:
    """Any answer about to become an SFT target or a "chosen" answer: a refusal is cleaned by
    ``decline_target`` (and dropped on a helpful prompt); a safe answer that points to proper
    help ("please talk to a doctor") is kept like any answer unless it goes on to comply;
    anything else is cleaned by ``answer_target``."""
    verdict = classify(text)
    if verdict.refused:
        if kind == "helpful":
            return Target("", DROPPED, "declines a helpful request")
        return decline_target(text)
    if verdict.declined:  # a referral, not a refusal
        if verdict.complied:
            return Target("", DROPPED, "points to help, then complies")
        return _cut_at_sentence(text)
    return answer_target(text)


def record_fields(target: Target, original: str, raw_field: str) -> dict:
    """The cleaning fields of a record: ``target``, ``target_note`` and the raw text when it
    changed (``raw_field`` is "raw_response" or "raw_chosen")."""
    changed = target.action != KEPT
    return {"target": target.action, "target_note": target.note,
            raw_field: original if changed else ""}


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` with its whitespace collapsed."""
    return [s for s in _SENTENCE_END.split(" ".join(text.split())) if s]


def _result(original: str, text: str, note: str) -> Target:
    same = " ".join(original.split()) == " ".join(text.split())
    return Target(original.strip() if same else text, KEPT if same else CUT, "" if same else note)


def decline_target(answer: str) -> Target:
    """The decline and its reason (and one safe-alternative sentence), or dropped."""
    if not classify(answer).declined:
        return Target("", DROPPED, "does not decline")
    start = compliance_start(answer)
    parts = sentences(answer if start is None else answer[:start])
    kept: list[str] = []
    for index, sentence in enumerate(parts[:REASON_WITHIN + 1]):
        kept.append(sentence)
        verdict = classify(" ".join(kept))
        if not (verdict.declined and verdict.explains_why):
            continue
        following = parts[index + 1] if index + 1 < len(parts) else ""
        if (following[-1:] in (".", "!") and _ALTERNATIVE.search(following)
                and not _GOES_AHEAD.search(following) and not complies(following)
                and not classify(following).refused):
            kept.append(following)
        return _result(answer, " ".join(kept), "cut after the reason")
    if start is not None and len(parts) <= REASON_WITHIN:
        return Target("", DROPPED, "complies before giving a reason")
    return Target("", DROPPED, f"no reason in the first {REASON_WITHIN + 1} sentences")


_LAST_END = re.compile(r"(?s)^(.*[.!?)\"'*`])(?:\s|$)")


def answer_target(answer: str) -> Target:
    """A helpful answer ending on a complete sentence or line, or dropped if it declines or warns
    that doing what was asked could cause harm (a trained policy's decline leaking into its
    answers: taught again, the leak would grow round by round)."""
    text = answer.strip()
    if not text:
        return Target("", DROPPED, "empty answer")
    verdict = classify(text)
    if verdict.declined:
        return Target("", DROPPED, "declines a helpful request")
    if verdict.warns_off:
        return Target("", DROPPED, "warns off a helpful request")
    return _cut_at_sentence(text)


def _cut_at_sentence(text: str) -> Target:
    """``text`` ending on its last complete sentence or line (answers hit a token limit)."""
    text = text.strip()
    head = text
    while (marker := _DANGLING_MARKER.search(head)):
        head = head[:marker.start()].rstrip()
    if head[-1:] not in tuple(".!?)\"'*`"):
        # Cut at the last sentence end or line break, unless that throws most of it away.
        match = _LAST_END.match(head)
        cut = max(head.rfind("\n"), len(match.group(1)) if match else -1)
        if cut >= len(head) // 3:
            head = head[:cut].rstrip()
            while (marker := _DANGLING_MARKER.search(head)):
                head = head[:marker.start()].rstrip()
    return _result(text, head, "cut at the last complete sentence")
