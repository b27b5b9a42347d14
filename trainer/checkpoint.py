"""Round checkpoints: the trainer's durable state, one folder per finished round.

``<trainer_dir>/rounds/round-000007/`` holds:

* ``state.json``      round number, promoted or not, where the current weights live, the
                      policy version, the Kafka offsets (the source of truth on resume)
* ``offsets.json``    ``"topic/partition" -> next offset`` (the same offsets, on their own)
* ``metrics.json``    the round's metrics (``loss/sft``, ``rewards/chosen``, ``probe/...``)
* ``trainer_config.json`` the resolved TrainerConfig
* ``examples.json``   which records the round trained on (prompt ids and log positions)
* ``probe.json``      the held-out probe examples (kept identical across restarts)
* promoted rounds only: merged policy weights (``config.json``, ``model.safetensors``,
  tokenizer) and, in reward mode, ``reward_model/``
* ``published.json``  written once serving runs the weights: ``{"version": N, "announced": bool}``

A folder is built under a temporary name and renamed into place, so a crash leaves either
the whole round or none of it. Rejected rounds keep no weights; ``state.json`` points at the
last promoted round's folder (or the base model) instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

ROUNDS = "rounds"
PREFIX = "round-"
STATE = "state.json"
PUBLISHED = "published.json"


@dataclass
class RoundState:
    round: int
    promoted: bool
    policy_weights: str          # folder with the current policy weights
    reward_weights: str | None   # folder with the current preference model (reward mode)
    policy_version: int          # serving version before this round's publish
    offsets: dict[str, int]
    created_at: float = 0.0
    extra: dict = field(default_factory=dict)


def rounds_dir(trainer_dir: Path) -> Path:
    return Path(trainer_dir) / ROUNDS


def round_dir(trainer_dir: Path, round_no: int) -> Path:
    return rounds_dir(trainer_dir) / f"{PREFIX}{round_no:06d}"


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_round(trainer_dir: Path, state: RoundState, metrics: dict, examples: dict,
                probe: dict, config, save_weights: Callable[[Path], None] | None,
                extra_files: dict[str, object] | None = None) -> Path:
    """Write a round folder atomically; ``save_weights(folder)`` writes the model files."""
    target = round_dir(trainer_dir, state.round)
    if target.exists():
        raise FileExistsError(f"{target} already exists; round numbers must increase")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if save_weights is not None:
        save_weights(partial)
    config.save(partial)
    _write_json(partial / "metrics.json", metrics)
    _write_json(partial / "offsets.json", state.offsets)
    _write_json(partial / "examples.json", examples)
    _write_json(partial / "probe.json", probe)
    for name, data in (extra_files or {}).items():
        _write_json(partial / name, data)
    _write_json(partial / STATE, asdict(state))  # last: its presence marks a whole folder
    _fsync_tree(partial)
    os.replace(partial, target)
    return target


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def write_published(folder: Path, version: int, announced: bool) -> None:
    """Record (atomically) that serving runs this round as ``version`` and if it was announced."""
    tmp = folder / (PUBLISHED + ".tmp")
    _write_json(tmp, {"version": version, "announced": announced})
    os.replace(tmp, folder / PUBLISHED)


def read_published(folder: Path) -> dict | None:
    path = Path(folder) / PUBLISHED
    return json.loads(path.read_text()) if path.exists() else None


def finished_rounds(trainer_dir: Path) -> list[Path]:
    """Complete round folders, oldest first (``.partial`` leftovers of a crash are ignored)."""
    base = rounds_dir(trainer_dir)
    if not base.exists():
        return []
    return sorted(p for p in base.iterdir()
                  if p.is_dir() and p.name.startswith(PREFIX) and not p.name.endswith(".partial")
                  and (p / STATE).exists())


def latest_round(trainer_dir: Path) -> Path | None:
    """The newest complete round folder."""
    done = finished_rounds(trainer_dir)
    return done[-1] if done else None


def round_outcome(summary: dict) -> str:
    """'round 3 promoted' or 'round 2 rejected: <reasons>' for a ``round_summary``."""
    if summary["promoted"]:
        kept = summary["metrics"].get("round/epochs_kept")
        planned = summary["metrics"].get("round/epochs_planned")
        if kept is not None and planned is not None and kept < planned:
            return (f"round {summary['round']} promoted with the weights of epoch {int(kept)} of "
                    f"{int(planned)} (the refusal probe rejected the later ones)")
        return f"round {summary['round']} promoted"
    return f"round {summary['round']} rejected: {'; '.join(summary['reasons'])}"


def round_summary(folder: Path) -> dict:
    """What a report shows of one round: its outcome, the gate's reasons, its data and probe,
    the policy version serving when it started and, once published, the version it became."""
    state = load_state(folder)
    metrics = load_json(folder, "metrics.json")
    shown = {k: round(v, 4) for k, v in metrics.items()
             if k.startswith(("data/", "probe/", "probe_before/", "loss/", "round/epochs"))}
    published = read_published(folder)
    return {"round": state.round, "promoted": state.promoted,
            "reasons": state.extra.get("reasons", []), "metrics": shown,
            "policy_version": state.policy_version,
            "published_version": published["version"] if published else None,
            "created_at": state.created_at}


def load_state(folder: Path) -> RoundState:
    return RoundState(**json.loads((Path(folder) / STATE).read_text()))


def load_json(folder: Path, name: str):
    return json.loads((Path(folder) / name).read_text())


def prune(trainer_dir: Path, keep: int, in_use: set[str]) -> list[Path]:
    """Delete weights of promoted rounds older than the newest ``keep``; keep the json files."""
    base = rounds_dir(trainer_dir)
    if keep <= 0 or not base.exists():
        return []
    promoted = sorted(p for p in base.iterdir() if p.is_dir() and any(p.glob("*.safetensors")))
    removed = []
    for folder in promoted[:-keep]:
        if str(folder) in in_use:
            continue
        for path in folder.glob("*.safetensors"):
            path.unlink()
        shutil.rmtree(folder / "reward_model", ignore_errors=True)
        removed.append(folder)
    return removed
