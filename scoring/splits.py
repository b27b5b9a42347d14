"""A fixed train / held-out split of prompt texts, so evaluation never sees training prompts.

The split depends only on the normalised text (a hash), not on order or on which set the
prompt came from, so every command (`cai run`, `cai eval`, the strategy grid) agrees on it.
"""

from __future__ import annotations

import hashlib

HELD_OUT_PERCENT = 25


def is_held_out(text: str) -> bool:
    digest = hashlib.sha256(" ".join(text.lower().split()).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT


def train_part(items, text=lambda item: item.prompt):
    return [item for item in items if not is_held_out(text(item))]


def held_out_part(items, text=lambda item: item.prompt):
    return [item for item in items if is_held_out(text(item))]
