"""Publish a trained checkpoint of a role (the policy, or the reward role's preference model) to
the running Triton, or roll the policy back to an earlier one.

Publishing follows one order so that nobody ever sees a version that is not serving (described
for the policy; ``publish_role`` does the same for the reward role, under ``reward/`` and
``cai:reward:version``, always through ``load_model``, since reward instances never swap in
place):

1. validate the checkpoint (``config.json``, tokenizer, ``*.safetensors`` only: pickled
   ``.bin``/``.pt`` weights are refused because loading them can run arbitrary code);
2. stage ``policy/<next>/`` (model.py, source.json, weights hard-linked or copied) outside
   the repository, then move it in with one rename;
3. swap it in: the running policy instances load the new weights in place, between batches, and
   confirm (``serving/hot_swap.py``: the control file ``policy/swap.json``, each instance's
   answer under ``policy/instances/``); a batch in flight finishes on the old version, none
   fail. Where no instance follows the control file (an older model.py), ``load_model("policy")``
   instead: the ``version_policy`` is ``latest 1``, so Triton loads the new version, switches
   traffic to it once it is ready and then unloads the old one;
4. once every instance serves the new version, set Redis ``cai:policy:version``;
5. call ``announce(version, checkpoint)`` (for example: send a PolicyVersionRecord);
6. delete published versions older than the newest ``keep_last``. Version 1 (a pointer to
   the base model, no weights of its own) is always kept.

If an instance (or Triton) cannot load the new version (corrupt weights), its folder is removed,
the previous version keeps serving (the control file points at it again), and ``PublishError``
explains why. A restarted Triton loads the newest version folder, which is always the version
that serves.

Rollback re-publishes the weights of a kept version as a *new* version number (its
``source.json`` records ``rollback_of``). Version numbers thus only grow, every number
always means the same weights, and lineage in records (``policy_version``) stays exact.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from core.settings import REWARD_ROLE, StackSettings
from serving.hot_swap import SwapFailed, instance_states, request_swap, wait_for_swap
from serving.repository import (
    SOURCE_FILE,
    WEIGHTS_DIR,
    read_version_source,
    versions,
    write_version,
)

logger = logging.getLogger(__name__)

ROLE = "policy"
REDIS_VERSION_KEY = "cai:policy:version"
REDIS_CHECKPOINTS_KEY = "cai:policy:checkpoints"  # hash: version -> checkpoint folder
PUBLISHED_ROLES = (ROLE, REWARD_ROLE)  # the roles a trainer publishes to
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def version_key(role: str = ROLE) -> str:
    """Redis key of the version ``role`` serves (``cai:policy:version``, ``cai:reward:version``)."""
    return f"cai:{role}:version"


def checkpoints_key(role: str = ROLE) -> str:
    """Redis hash of ``role``'s published versions: version -> checkpoint folder."""
    return f"cai:{role}:checkpoints"


def _check_role(role: str) -> None:
    if role not in PUBLISHED_ROLES:
        raise PublishError(f"cannot publish to role {role!r}: only {', '.join(PUBLISHED_ROLES)} "
                           "take trained versions")


def serving_version(redis_value: str | bytes | None) -> int:
    """The serving policy version from the value of ``REDIS_VERSION_KEY``: the base model (v1)
    serves until a version is published, so an unset key means 1."""
    return int(redis_value) if redis_value else 1


class PublishError(RuntimeError):
    """Publishing or rolling back failed; the message says what and how to fix it.
    ``retryable``: a service was unreachable (try again later), not a checkpoint Triton
    refused to load."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def validate_checkpoint(checkpoint_dir: Path) -> list[Path]:
    """Check a checkpoint folder is loadable and safe; return its safetensors files."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        raise PublishError(f"checkpoint {folder} is not a folder; pass the folder that "
                           "save_pretrained wrote")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise PublishError(
            f"checkpoint {folder} contains pickled weights {pickles}: refused, because loading a "
            "pickle can run arbitrary code. Fix: save with save_pretrained(..., "
            "safe_serialization=True) and remove the pickle files")
    if not (folder / "config.json").exists():
        raise PublishError(f"checkpoint {folder} has no config.json; save the model with "
                           "save_pretrained so that from_pretrained can load it")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise PublishError(f"checkpoint {folder} has no *.safetensors weights; save with "
                           "save_pretrained(..., safe_serialization=True) (merge LoRA adapters "
                           "first)")
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        raise PublishError(f"checkpoint {folder} has no tokenizer files "
                           f"({', '.join(TOKENIZER_FILES)}); save the tokenizer next to the "
                           "weights (tokenizer.save_pretrained)")
    from safetensors import safe_open

    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as handle:
                list(handle.keys())
        except Exception as exc:  # noqa: BLE001
            raise PublishError(f"checkpoint {folder}: {path.name} is not a valid safetensors file "
                               f"({exc}); re-save the checkpoint") from None
    return weights


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # no extra disk, survives the trainer deleting its checkpoint
    except OSError:
        shutil.copy2(source, target)


def _copy_checkpoint(checkpoint: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for path in checkpoint.iterdir():
        if path.is_file():
            _link_or_copy(path, target / path.name)


@contextlib.contextmanager
def _publish_lock(settings: StackSettings) -> Iterator[None]:
    path = settings.triton_repository.parent / "publish.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # one publisher at a time per repository
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _triton(settings: StackSettings, timeout_s: float):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(settings.triton_http, connection_timeout=timeout_s,
                                            network_timeout=timeout_s)


def _redis(settings: StackSettings):
    import redis

    return redis.Redis.from_url(settings.redis_address, socket_timeout=5, decode_responses=True)


def _load_and_wait(settings: StackSettings, version: int, timeout_s: float,
                   role: str = ROLE) -> None:
    from tritonclient.utils import InferenceServerException

    client = _triton(settings, timeout_s)
    try:
        client.load_model(role)
        deadline = time.monotonic() + timeout_s
        while not client.is_model_ready(role, str(version)):
            if time.monotonic() > deadline:
                raise PublishError(f"{role} v{version} did not become ready within "
                                   f"{timeout_s:.0f}s")
            time.sleep(0.2)
    except InferenceServerException as exc:
        # Keep the cause; the python traceback that follows it is in Triton's log.
        cause = str(exc.message() or exc).split("\n\nAt:")[0].strip()
        raise PublishError(f"Triton at {settings.triton_http} could not load {role} v{version}: "
                           f"{cause} (traceback in the Triton log)",
                           retryable=_unreachable(cause)) from None
    except PublishError:
        raise
    except Exception as exc:  # noqa: BLE001 - connection refused or reset, a timeout
        raise PublishError(f"Triton at {settings.triton_http} unreachable while loading {role} "
                           f"v{version}: {type(exc).__name__}: {exc}", retryable=True) from None
    finally:
        client.close()


def _unreachable(cause: str) -> bool:
    """A load that failed because the server could not be reached, not because of the model."""
    return any(marker in cause.lower() for marker in (
        "connection", "timed out", "timeout", "unavailable", "broken pipe", "reset by peer"))


def _serve(settings: StackSettings, version: int, timeout_s: float, role: str = ROLE) -> str:
    """Make ``version`` the one ``role`` serves; returns how: "in place" or "reload"."""
    role_dir = settings.triton_repository / role
    token = request_swap(role_dir, version)
    try:
        # No instance of a role without hot swap (the reward role) reports: None, a reload.
        states = wait_for_swap(role_dir, version, token, timeout_s)
    except SwapFailed as exc:
        raise PublishError(f"the {role} instances could not load {role} v{version}: "
                           f"{exc}") from None
    except TimeoutError as exc:
        # The instances did not answer in time (a hung or overloaded Triton): try again later.
        raise PublishError(f"{role} v{version} was not swapped in: {exc}",
                           retryable=True) from None
    if states is None:  # no instance follows the control file: reload through Triton
        _load_and_wait(settings, version, timeout_s, role)
        return "reload"
    return "in place"


def _install_version(settings: StackSettings, source: dict, weights_from: Path | None,
                     keep_last: int, timeout_s: float, role: str = ROLE) -> int:
    """Stage, load and point Redis at a new version of ``role``; the caller holds the lock."""
    role_dir = settings.triton_repository / role
    if not (role_dir / "config.pbtxt").exists():
        fix = ("start the stack (`cai stack up`) first" if role == ROLE else
               f"start the stack with a recipe whose trainer uses the {role} role first")
        raise PublishError(f"{role_dir}/config.pbtxt is missing: the model repository has no "
                           f"{role} role. Fix: {fix}")
    previous = versions(role_dir)
    version = (max(previous) if previous else 0) + 1
    staging = settings.triton_repository.parent / "staging" / role / str(version)
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    if weights_from is not None:
        _copy_checkpoint(weights_from, staging / WEIGHTS_DIR)
    write_version(staging.parent, version, source)
    target = role_dir / str(version)
    os.replace(staging, target)
    started = time.monotonic()
    try:
        how = _serve(settings, version, timeout_s, role)
    except BaseException as exc:  # any load error (even an interrupt): roll back the folder
        shutil.rmtree(target, ignore_errors=True)
        if not isinstance(exc, PublishError):
            if previous:  # interrupted mid-swap: point the instances back at what serves
                with contextlib.suppress(OSError):
                    request_swap(role_dir, max(previous))
            raise
        try:  # make sure the previous version is what serves
            _serve(settings, max(previous), timeout_s, role) if previous else None
        except PublishError as again:
            logger.error("restoring the previous %s version failed too: %s", role, again)
        fix = ("start Triton (`cai stack status`), then publish again" if exc.retryable else
               "check the checkpoint loads with from_pretrained")
        raise PublishError(f"{exc}. Removed {target}; {role} "
                           f"v{max(previous) if previous else '-'} keeps serving. Fix: {fix}",
                           retryable=exc.retryable) from None
    logger.info("%s v%d serving after %.2fs (%s)", role, version, time.monotonic() - started, how)
    _record_serving(settings, version, source.get("checkpoint", ""), role)
    _prune(role_dir, keep_last, serving=version)
    return version


def _record_serving(settings: StackSettings, version: int, checkpoint: str,
                    role: str = ROLE) -> None:
    """Point Redis at the version Triton now serves, and remember which checkpoint it holds."""
    key = version_key(role)
    try:
        redis = _redis(settings)
        redis.set(key, str(version))
        redis.hset(checkpoints_key(role), str(version), checkpoint)
    except Exception as exc:  # noqa: BLE001
        fix = f"`cai rollback {version}`" if role == ROLE else "publish again"
        raise PublishError(f"{role} v{version} is serving, but setting Redis {key} "
                           f"at {settings.redis_address} failed: {exc}. Fix: start Redis, then "
                           f"{fix} or set the key by hand",
                           retryable=True) from None


def _prune(role_dir: Path, keep_last: int, serving: int) -> None:
    published = [v for v in versions(role_dir) if v > 1]
    for old in published[:-keep_last] if keep_last > 0 else []:
        if old != serving:
            shutil.rmtree(role_dir / str(old), ignore_errors=True)
            logger.info("deleted old %s v%d (keep_last=%d)", role_dir.name, old, keep_last)


def publish_role(
    role: str, checkpoint_dir: str | Path, stack_settings: StackSettings, keep_last: int = 3,
    announce: Callable[[int, str], object] | None = None, timeout_s: float = 300.0,
) -> int:
    """Serve ``checkpoint_dir`` as the next version of ``role`` (policy or reward); return that
    version number. Redis ``cai:<role>:version`` points at it once it serves."""
    _check_role(role)
    checkpoint = Path(checkpoint_dir).resolve()
    validate_checkpoint(checkpoint)
    with _publish_lock(stack_settings):
        version = _install_version(
            stack_settings,
            {"model": WEIGHTS_DIR, "checkpoint": str(checkpoint), "published_at": time.time()},
            checkpoint, keep_last, timeout_s, role,
        )
    if announce is not None:
        announce(version, str(checkpoint))
    return version


def publish_policy(
    checkpoint_dir: str | Path, stack_settings: StackSettings, keep_last: int = 3,
    announce: Callable[[int, str], object] | None = None, timeout_s: float = 300.0,
) -> int:
    """Serve ``checkpoint_dir`` as the next policy version; return that version number."""
    return publish_role(ROLE, checkpoint_dir, stack_settings, keep_last=keep_last,
                        announce=announce, timeout_s=timeout_s)


def published_version(checkpoint_dir: str | Path, stack_settings: StackSettings,
                      role: str = ROLE) -> int | None:
    """The newest version of ``role`` in the repository that holds ``checkpoint_dir`` (not as a
    rollback): found from the version folders alone, with Redis down too."""
    wanted = str(Path(checkpoint_dir).resolve())
    role_dir = stack_settings.triton_repository / role
    for version in sorted(versions(role_dir), reverse=True):
        source_file = role_dir / str(version) / SOURCE_FILE
        if version < 2 or not source_file.exists():
            continue
        try:
            source = json.loads(source_file.read_text())
        except (OSError, ValueError):
            continue
        if source.get("checkpoint") == wanted and "rollback_of" not in source:
            return version
    return None


def adopt_published(checkpoint_dir: str | Path, stack_settings: StackSettings,
                    timeout_s: float = 300.0, role: str = ROLE) -> int | None:
    """Finish a publish of ``checkpoint_dir`` that stopped after its version folder was installed.

    A publisher killed after the weights landed in the repository, but before Redis pointed at
    them, leaves a version folder holding this checkpoint (found without Redis). If it is the
    newest, loading it and setting Redis completes the publish without spending a new version
    number (a Redis that is down raises a retryable ``PublishError``); an older one is returned
    as it is. None when no version holds this checkpoint (publish it normally).
    """
    _check_role(role)
    wanted = str(Path(checkpoint_dir).resolve())
    role_dir = stack_settings.triton_repository / role
    with _publish_lock(stack_settings):
        found = published_version(checkpoint_dir, stack_settings, role=role)
        if found is None:
            return None
        newest = max(versions(role_dir))
        if found != newest:
            return found
        _serve(stack_settings, newest, timeout_s, role)
        _record_serving(stack_settings, newest, wanted, role)
    logger.info("%s v%d was installed for %s but not recorded; completed its "
                "publish", role, newest, wanted)
    return newest


def rollback(version: int, stack_settings: StackSettings, keep_last: int = 3,
             announce: Callable[[int, str], object] | None = None, timeout_s: float = 300.0) -> int:
    """Serve the weights of ``version`` again, as a new version number; return that number."""
    role_dir = stack_settings.triton_repository / ROLE
    with _publish_lock(stack_settings):
        folder = role_dir / str(version)
        if not (folder / SOURCE_FILE).exists():
            kept = versions(role_dir)
            raise PublishError(f"policy v{version} is not in {role_dir} (kept versions: {kept}); "
                               "only kept versions can be rolled back to (see keep_last)")
        original = json.loads((folder / SOURCE_FILE).read_text())
        weights = folder / WEIGHTS_DIR
        source = {"rollback_of": version, "checkpoint": original.get("checkpoint", ""),
                  "published_at": time.time(), "spec": original.get("spec")}
        if weights.is_dir():
            source["model"] = WEIGHTS_DIR
            new = _install_version(stack_settings, source, weights, keep_last, timeout_s)
        else:  # version 1: a pointer to the base model
            source["model"] = read_version_source(folder)
            source["checkpoint"] = source["checkpoint"] or source["model"]
            new = _install_version(stack_settings, source, None, keep_last, timeout_s)
    if announce is not None:
        announce(new, source["checkpoint"])
    return new


def serving_status(stack_settings: StackSettings) -> dict:
    """What serves per role, the policy (and reward) versions on disk and the Redis pointers.

    Policy instances that swapped versions in place keep Triton's loaded version number; their
    entry shows the version they serve (``loaded_as``: Triton's), and ``policy_instances`` each
    instance's own report."""
    status: dict = {"triton": stack_settings.triton_http, "roles": {}, "redis_policy_version": None}
    role_dir = stack_settings.triton_repository / ROLE
    instances = instance_states(role_dir)
    served = sorted({str(s["version"]) for s in instances})
    try:
        client = _triton(stack_settings, 5)
        for entry in client.get_model_repository_index():
            shown = {k: entry.get(k) for k in ("version", "state", "reason") if entry.get(k)}
            if (entry["name"] == ROLE and shown.get("state") == "READY" and len(served) == 1
                    and served[0] != shown.get("version")):
                shown["loaded_as"], shown["version"] = shown.get("version"), served[0]
            status["roles"].setdefault(entry["name"], []).append(shown)
        client.close()
    except Exception as exc:  # noqa: BLE001
        status["triton_error"] = str(exc)
    status["policy_versions_on_disk"] = versions(role_dir)
    status["policy_instances"] = [{k: s.get(k) for k in ("id", "version", "error")}
                                  for s in instances]
    reward_dir = stack_settings.triton_repository / REWARD_ROLE
    if reward_dir.is_dir():
        status["reward_versions_on_disk"] = versions(reward_dir)
    try:
        store = _redis(stack_settings)
        status["redis_policy_version"] = store.get(REDIS_VERSION_KEY)
        if reward_dir.is_dir():
            status["redis_reward_version"] = store.get(version_key(REWARD_ROLE))
    except Exception as exc:  # noqa: BLE001
        status["redis_error"] = str(exc)
    return status
