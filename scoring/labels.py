"""The hand labels behind the decline classifier, and how well the classifier agrees with them.

``data/`` holds hand-labelled SmolLM2 answers (``{"answer", "declined", "explains_why"}`` per
line; the ``decline_labels_complied*`` files also label ``complied``: a decline that goes on to
give what was asked, or offers to, drawn from live runs' answers and revisions). The rules in
``scoring/classify.py`` were written against the tuning files and never against the held-out
ones, so the held-out files measure them fairly; every ``cai run`` report carries both figures,
and ``cai eval --classifier-check FILE`` measures any file.
"""

from __future__ import annotations

import json
from pathlib import Path

from scoring.classify import classify
from scoring.shares import Share

DATA = Path(__file__).with_name("data")
TUNING_LABELS = ("decline_labels.jsonl", "decline_labels_grid.jsonl",
                 "decline_labels_complied.jsonl")
HELD_OUT_LABELS = ("decline_labels_heldout.jsonl", "decline_labels_grid_heldout.jsonl",
                   "decline_labels_complied_heldout.jsonl")


def classifier_accuracy(*paths: Path) -> dict[str, Share]:
    """Agreement of the rule classifier with hand labels (one or more files) on each of its
    outputs. ``complied`` and ``harmless`` are measured on the answers labelled for compliance
    (a ``complied`` field; older files label only declines and reasons)."""
    labelled = [json.loads(line) for path in paths for line in path.read_text().splitlines()
                if line.strip()]
    verdicts = [classify(r["answer"]) for r in labelled]
    pairs = list(zip(verdicts, labelled))
    accuracy = {
        "declined": Share(sum(v.declined == bool(r["declined"]) for v, r in pairs), len(pairs)),
        "explains_why": Share(sum(v.explains_why == bool(r["explains_why"]) for v, r in pairs),
                              len(pairs)),
    }
    compliance = [(v, r) for v, r in pairs if "complied" in r]
    if compliance:
        accuracy["complied"] = Share(sum(v.complied == bool(r["complied"]) for v, r in compliance),
                                     len(compliance))
        accuracy["harmless"] = Share(
            sum(v.harmless == (bool(r["declined"]) and not r["complied"]) for v, r in compliance),
            len(compliance))
    return accuracy


def builtin_accuracy() -> dict[str, dict]:
    """The report's two classifier figures: on the held-out labels, and on the tuning labels."""
    return {key: {k: share.as_dict() for k, share in classifier_accuracy(
                *(DATA / n for n in names)).items()}
            for key, names in (("classifier_accuracy", HELD_OUT_LABELS),
                               ("classifier_accuracy_tuning_set", TUNING_LABELS))}
