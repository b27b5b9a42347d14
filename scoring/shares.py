"""A share (hits out of a total) with its 95% Wilson interval, and how reports print one.

Every figure the evaluation reports (harmless, explains why, over-refusal, judge agreement,
classifier accuracy) is a ``Share``; its ``as_dict`` is the JSON form reports store and ``fmt``
prints that form as ``40.0% [31.7, 48.9] (n=120)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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


def fmt(entry: dict | None) -> str:
    """A stored share (``Share.as_dict``) as report text."""
    if not entry or entry.get("value") is None:
        return "n/a"
    lo, hi = entry["ci95"]
    return f"{100 * entry['value']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={entry['n']})"
