"""Render the Triton model repository from settings: the four generation roles (policy, critic,
reviser, judge) and, when a recipe's trainer needs it, the reward role (the preference model).

Layout, one folder per role::

    <repo>/<role>/config.pbtxt          python backend, dynamic batching, CPU or GPU instances
                                        (CAI_DEVICE), knobs
    <repo>/<role>/<version>/model.py    a copy of serving/triton_model.py
    <repo>/<role>/<version>/source.json {"model": <folder or hub id>, ...}: the weights it serves
    <repo>/<role>/<version>/weights/    a published checkpoint (policy or reward, versions >= 2,
                                        see publish.py)

Version 1 of every role points at the model resolved from ``ModelSettings``; the reward role's
is the policy's base model (or ``CAI_REWARD_MODEL``), which it serves with a fresh, seeded score
head until a trained preference model is published. Published versions are never touched by a
re-render, so ``render_repository`` is idempotent and safe to run against a live repository.
Every ``version_policy`` is ``latest 1``: Triton serves only the newest version, and loading a
newer one swaps it in atomically.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from core.settings import ROLES, ModelSettings, StackSettings, resolve_device
from serving.models import resolve

logger = logging.getLogger(__name__)

MODEL_FILE = Path(__file__).with_name("triton_model.py")
SOURCE_FILE = "source.json"
INSTANCE_KINDS = {"cpu": "KIND_CPU", "cuda": "KIND_GPU"}
WEIGHTS_DIR = "weights"


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def config_pbtxt(role: str, spec: str, threads: int = 1, instances: int = 1,
                 max_batch_size: int = 16, batching: bool = True, max_queue_delay_us: int = 10_000,
                 dtype: str = "float32", prefix_min_tokens: int = 32,
                 share_cores: bool = True, device: str = "cpu", hot_swap: bool = True) -> str:
    """The config.pbtxt text of one role; ``device`` ``cuda`` gives GPU instances; ``hot_swap``
    (the policy only: the role that is published) lets instances take new versions in place."""
    batching_block = (
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
        if batching else ""
    )
    params = {"role": role, "model": spec, "threads": str(threads), "dtype": dtype,
              "prefix_min_tokens": str(prefix_min_tokens), "share_cores": str(share_cores).lower(),
              "hot_swap": str(hot_swap and role == "policy").lower()}
    params_block = "".join(
        f'parameters: {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}\n'
        for k, v in params.items()
    )
    return (
        f'name: "{role}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch_size}\n"
        f'input [ {{ name: "request" data_type: TYPE_STRING dims: [ 1 ] }} ]\n'
        f'output [ {{ name: "response" data_type: TYPE_STRING dims: [ 1 ] }} ]\n'
        "version_policy: { latest: { num_versions: 1 } }\n"
        f"{batching_block}"
        f"instance_group [ {{ count: {instances} kind: {INSTANCE_KINDS[device]} }} ]\n"
        f"{params_block}"
    )


def write_version(role_dir: Path, version: int, source: dict) -> Path:
    """Create ``role_dir/<version>/`` with model.py and source.json; returns the folder."""
    folder = role_dir / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    _write_if_changed(folder / "model.py", MODEL_FILE.read_text())
    _write_if_changed(folder / SOURCE_FILE, json.dumps(source, indent=2, sort_keys=True) + "\n")
    return folder


def read_version_source(version_dir: Path) -> str:
    """The folder or hub id that a version serves (``weights/`` inside it for published
    versions)."""
    path = Path(version_dir) / SOURCE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: every version folder needs source.json naming "
                                "its weights; re-render the repository or re-publish the version")
    model = json.loads(path.read_text())["model"]
    local = Path(version_dir) / model
    return str(local) if not Path(model).is_absolute() and local.exists() else model


def versions(role_dir: Path) -> list[int]:
    """Version numbers present in a role folder, ascending."""
    if not role_dir.exists():
        return []
    return sorted(int(p.name) for p in role_dir.iterdir() if p.is_dir() and p.name.isdigit())


class RepositoryError(ValueError):
    """The model repository cannot serve what was asked; the message says why and the fix."""


def _check_published_base(role_dir: Path, spec: str) -> None:
    """Refuse to put a new base model under versions trained from another one.

    Triton serves the newest version, so trained versions of model A would keep answering for a
    stack started with model B.
    """
    first = role_dir / "1" / SOURCE_FILE
    if not first.exists():
        return
    previous = json.loads(first.read_text()).get("spec")
    trained = [v for v in versions(role_dir) if v > 1]
    if previous is not None and previous != spec and trained:
        raise RepositoryError(
            f"{role_dir} holds {role_dir.name} versions {trained} trained from {previous!r}, but "
            f"the model asked for is {spec!r}. Fix: use --model {previous} (or "
            f"CAI_MODEL={previous}) to go on with them, or another state folder (--state-dir / "
            f"CAI_STATE_DIR) for {spec!r}")


def render_repository(
    repo_dir: Path, models: ModelSettings, cache_dir: Path, roles: tuple[str, ...] = ROLES,
    threads: int | None = None, instances: int | None = None, max_batch_size: int | None = None,
    batching: bool | None = None, max_queue_delay_us: int | None = None, dtype: str | None = None,
    prefix_min_tokens: int | None = None, share_cores: bool | None = None,
    hot_swap: bool | None = None,
) -> Path:
    """Write config.pbtxt and version 1 of every role in ``roles`` (any of ``ROLES`` and
    ``REWARD_ROLE``); refresh model.py in existing versions.

    Knobs left as None come from ``ServingSettings`` (env ``CAI_SERVING_*``): ``threads``
    (torch threads per instance), ``instances`` (processes per role), ``max_batch_size`` and
    ``max_queue_delay_us`` (dynamic batching; ``batching=False`` turns it off), ``dtype``,
    ``prefix_min_tokens`` (share a common prompt prefix's KV cache; 0 = off), ``share_cores``
    (split the cores among the busy instances), ``hot_swap`` (the policy takes new versions in
    place, ``serving/hot_swap.py``).
    """
    from serving.settings import ServingSettings

    given = {"threads": threads, "instances": instances, "max_batch_size": max_batch_size,
             "batching": batching, "max_queue_delay_us": max_queue_delay_us, "dtype": dtype,
             "prefix_min_tokens": prefix_min_tokens, "share_cores": share_cores,
             "hot_swap": hot_swap}
    knobs = ServingSettings(**{k: v for k, v in given.items() if v is not None}).model_dump()
    knobs["device"] = resolve_device(models.device)  # CAI_DEVICE: KIND_CPU or KIND_GPU
    repo_dir = Path(repo_dir)
    for role in roles:
        spec = models.for_role(role)
        role_dir = repo_dir / role
        role_dir.mkdir(parents=True, exist_ok=True)
        _check_published_base(role_dir, spec)
        _write_if_changed(role_dir / "config.pbtxt", config_pbtxt(role, spec, **knobs))
        write_version(role_dir, 1, {"model": resolve(spec, Path(cache_dir)), "spec": spec})
        for version in versions(role_dir):
            if version > 1 and (role_dir / str(version) / SOURCE_FILE).exists():
                _write_if_changed(role_dir / str(version) / "model.py", MODEL_FILE.read_text())
        logger.info("rendered %s (model %s) in %s", role, spec, role_dir)
    return repo_dir


def policy_source(settings: StackSettings, models: ModelSettings, version: int | None) -> str:
    """The weights a policy version serves: the base model for v1 (or no version), else the
    folder recorded in that version of the stack's model repository."""
    if version is None or version <= 1:
        return resolve(models.for_role("policy"), settings.cache_dir)
    return read_version_source(settings.triton_repository / "policy" / str(version))
