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

import fcntl
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
# Written after the round's offsets were committed to Kafka: the round is over, its records
# will not be read again, its version (if promoted) is serving and announced.
COMMITTED = "committed"


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


LOCK = "trainer.lock"


class TrainerLocked(RuntimeError):
    """Another trainer runs on the same state: two would train every record twice."""


def lock(trainer_dir: Path):
    """Hold the trainer folder's lock for as long as the returned file stays open (the kernel
    drops it when the process dies, SIGKILL included). Raises ``TrainerLocked`` when another
    process holds it."""
    path = Path(trainer_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - kept open for the process's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise TrainerLocked(f"another trainer ({holder}) runs on {trainer_dir}; one trainer "
                            "per state: stop it first, or give this one its own --trainer-dir"
                            ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def rounds_dir(trainer_dir: Path) -> Path:
    return Path(trainer_dir) / ROUNDS


def round_dir(trainer_dir: Path, round_no: int) -> Path:
    return rounds_dir(trainer_dir) / f"{PREFIX}{round_no:06d}"


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_json_atomic(path: Path, data) -> None:
    """Replace ``path`` by ``data`` as JSON in one rename: a reader sees the old or the new."""
    tmp = path.with_name(path.name + ".tmp")
    _write_json(tmp, data)
    os.replace(tmp, path)


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
    write_json_atomic(folder / PUBLISHED, {"version": version, "announced": announced})


PUBLISH_FAILURES = "publish_failures.json"
QUARANTINED = "quarantined.json"


def count_publish_failure(folder: Path, reason: str) -> int:
    """Record one failed load of a round's weights; return how many there were."""
    path = Path(folder) / PUBLISH_FAILURES
    failures = json.loads(path.read_text()) if path.exists() else []
    failures.append({"reason": reason[:1000]})
    write_json_atomic(path, failures)
    return len(failures)


def is_quarantined(folder: Path) -> bool:
    return (Path(folder) / QUARANTINED).exists()


def quarantine(folder: Path, reason: str, base: str | None = None) -> str:
    """Turn a promoted round that serving never loads into a rejected one: ``state.json`` points
    back at the previous weights and carries the reason. Returns that weights pointer."""
    folder = Path(folder)
    state = load_state(folder)
    previous = state.extra.get("previous_weights")
    if previous is None:  # a folder from before the pointer was kept: the round before it
        earlier = [f for f in finished_rounds(folder.parent.parent) if f.name < folder.name]
        previous = load_state(earlier[-1]).policy_weights if earlier else base
    if previous is None or previous == folder.name:
        raise ValueError(f"cannot quarantine {folder}: no earlier weights are known")
    state.promoted = False
    state.policy_weights = previous
    state.extra["reasons"] = [*state.extra.get("reasons", []), reason]
    _write_json(folder / QUARANTINED, {"reason": reason})
    tmp = folder / (STATE + ".tmp")
    _write_json(tmp, asdict(state))
    os.replace(tmp, folder / STATE)
    return previous


def mark_committed(folder: Path) -> None:
    (Path(folder) / COMMITTED).touch()


def committed_rounds(trainer_dir: Path) -> list[Path]:
    """Finished rounds whose offsets the trainer committed, oldest first."""
    return [f for f in finished_rounds(trainer_dir) if (f / COMMITTED).exists()]


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
        version = summary.get("version")
        return f"round {summary['round']} promoted" + (f" as policy v{version}" if version else "")
    return f"round {summary['round']} rejected: {'; '.join(summary['reasons'])}"


def round_summary(folder: Path) -> dict:
    """What a report shows of one round: its outcome, the gate's reasons and dev figures
    (``gate``: "before" the serving policy, "after" the candidate, each a dict of Share dicts),
    the version it was published as, its data, losses and probe."""
    state = load_state(folder)
    metrics = load_json(folder, "metrics.json")
    shown = {k: round(v, 4) for k, v in metrics.items()
             if k.startswith(("data/", "probe/", "probe_before/", "loss/", "dev/", "time/",
                              "pm/", "reward/", "rl/"))}
    gate = state.extra.get("gate") or {}
    published = read_published(folder) if state.promoted else None
    return {"round": state.round, "promoted": state.promoted,
            "version": published["version"] if published else None,
            "version_before": state.policy_version,
            "reasons": state.extra.get("reasons", []), "metrics": shown,
            "gate": {"before": gate.get("before"), "after": gate.get("after")},
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
