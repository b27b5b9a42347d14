"""A fixed train / dev / held-out split of prompt texts, so no decision sees the prompts it is
judged on.

* **held-out** (25%): only reports (`cai run`'s final table, `cai eval`, `cai grid`) use it;
* **dev** (15%): the trainer's promotion gate measures each round on it, and the report never
  does, so the gate's choices cannot flatter the report;
* **train** (60%): fed to the pipeline and trained on.

The split depends only on the normalised text (a hash), not on order or on which set the
prompt came from, so every command agrees on it. The held-out share is the same hash range it
always was, so held-out figures stay comparable with earlier ones.
"""

from __future__ import annotations

import hashlib

HELD_OUT_PERCENT = 25
DEV_PERCENT = 15
SPLITS = ("train", "dev", "held-out")


def _bucket(text: str) -> int:
    digest = hashlib.sha256(" ".join(text.lower().split()).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100


def split_of(text: str) -> str:
    """Which split a prompt text belongs to: 'train', 'dev' or 'held-out'."""
    bucket = _bucket(text)
    if bucket < HELD_OUT_PERCENT:
        return "held-out"
    return "dev" if bucket < HELD_OUT_PERCENT + DEV_PERCENT else "train"


def is_held_out(text: str) -> bool:
    return split_of(text) == "held-out"


def part(items, name: str, text=lambda item: item.prompt):
    """The items of one split, in their order."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
    return [item for item in items if split_of(text(item)) == name]


def train_part(items, text=lambda item: item.prompt):
    return part(items, "train", text)


def dev_part(items, text=lambda item: item.prompt):
    return part(items, "dev", text)


def held_out_part(items, text=lambda item: item.prompt):
    return part(items, "held-out", text)
