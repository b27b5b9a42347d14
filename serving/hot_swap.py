"""In-place hot swap: running policy instances take a new version's weights without a reload.

The model repository is both the durable record and the control channel, because the publisher
(the trainer, ``cai publish``) must write the version folder there anyway and Triton reads it,
so nothing else (no Redis credentials, no Kafka client) has to reach the Triton instances:

* ``<role>/<version>/`` holds each version's weights (``serving/publish.py``); the newest folder
  is what a restarted Triton loads, so restarts and rollbacks need nothing else;
* ``<role>/swap.json`` is the control message, ``{"version", "token", "requested_at"}``, written
  atomically by the publisher after the version folder is in place;
* ``<role>/instances/<id>.json`` is each instance's answer and heartbeat: the version it
  serves, the last control token it handled, the error if that version failed to load.

Each instance runs a ``SwapWatcher`` thread. It polls ``swap.json`` (a ``stat`` every 20 ms),
loads the new weights into a second engine while the current one keeps serving, then replaces
the engine with one assignment. ``execute`` reads the engine once per batch, so a batch in flight
finishes on the version it started with and every batch after the swap runs the new one; each
answer carries the version of the engine that made it. A load that fails leaves the old engine
serving and reports the error. The publisher (``wait_for_swap``) returns once every live
instance (heartbeat younger than ``HEARTBEAT_STALE_S``) serves the version, or fails on the
first error; with no live instance (Triton not running this code) it falls back to a Triton
model reload.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SWAP_FILE = "swap.json"
INSTANCES_DIR = "instances"
POLL_S = 0.02
HEARTBEAT_S = 1.0
HEARTBEAT_STALE_S = 5.0
FORGET_AFTER_S = 300.0  # files of instances gone this long are deleted by the publisher


class SwapFailed(RuntimeError):
    """An instance could not load the requested version; it keeps serving its old one."""


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def request_swap(role_dir: Path, version: int) -> str:
    """Ask every instance of the role to serve ``version``; returns the request's token."""
    token = uuid.uuid4().hex
    _write_json(Path(role_dir) / SWAP_FILE,
                {"version": int(version), "token": token, "requested_at": time.time()})
    return token


def instance_states(role_dir: Path, stale_s: float = HEARTBEAT_STALE_S) -> list[dict]:
    """The live instances' states (heartbeat younger than ``stale_s``), oldest first."""
    folder = Path(role_dir) / INSTANCES_DIR
    if not folder.is_dir():
        return []
    now = time.time()
    states = []
    for path in folder.glob("*.json"):
        state = _read_json(path)
        if state is None:
            continue
        age = now - float(state.get("heartbeat", 0))
        if age <= stale_s:
            states.append(state)
        elif age > FORGET_AFTER_S:
            path.unlink(missing_ok=True)
    return sorted(states, key=lambda s: s.get("started", 0))


def wait_for_swap(role_dir: Path, version: int, token: str, timeout_s: float,
                  poll_s: float = 0.01) -> list[dict] | None:
    """Wait until every live instance serves ``version``; returns their states, or None when no
    instance is live (nobody watches: reload through Triton instead). Raises ``SwapFailed`` on
    the first instance that could not load it, ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = instance_states(role_dir)
        if not states:
            return None
        failed = [s for s in states if s.get("token") == token and s.get("error")]
        if failed:
            raise SwapFailed(failed[0]["error"])
        if all(s.get("version") == version for s in states):
            return states
        if time.monotonic() > deadline:
            behind = [f"{s.get('id')} (v{s.get('version')})" for s in states
                      if s.get("version") != version]
            raise TimeoutError(f"instances {', '.join(behind)} did not take v{version} within "
                               f"{timeout_s:.0f}s")
        time.sleep(poll_s)


def served_versions(role_dir: Path) -> list[int]:
    """The versions the live instances serve (empty when none reports)."""
    return sorted({int(s["version"]) for s in instance_states(role_dir) if "version" in s})


class SwapWatcher:
    """Inside one instance: follow ``swap.json`` and swap engines between batches.

    ``load(version)`` builds the new engine (may take seconds; runs on this thread while the old
    engine keeps serving); ``install(version, engine)`` makes it the one the next batch uses.
    """

    def __init__(self, role_dir: Path, version: int, load: Callable[[int], Any],
                 install: Callable[[int, Any], None], poll_s: float = POLL_S,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.role_dir = Path(role_dir)
        self.version = version
        self.load = load
        self.install = install
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.started = time.time()
        self.token: str | None = None
        self.error: str | None = None
        self.failed_version: int | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None  # swap.json's (mtime_ns, size)
        folder = self.role_dir / INSTANCES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.state_file = folder / f"{self.id}.json"
        # Two threads: a load can take seconds, and the heartbeat must go on meanwhile.
        self._threads = [threading.Thread(target=self._watch, name="cai-swap-watch", daemon=True),
                         threading.Thread(target=self._beat, name="cai-swap-beat", daemon=True)]

    def start(self) -> SwapWatcher:
        self._report()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=5)
        with self._lock:
            self.state_file.unlink(missing_ok=True)

    def _report(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            _write_json(self.state_file, {
                "id": self.id, "pid": os.getpid(), "version": self.version, "token": self.token,
                "error": self.error, "failed_version": self.failed_version,
                "started": self.started, "heartbeat": time.time()})

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # the watcher must outlive any one bad request
                logger.exception("hot-swap watcher of %s", self.role_dir)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._report()
            except OSError as exc:
                logger.warning("hot-swap heartbeat of %s: %s", self.role_dir, exc)

    def check(self) -> bool:
        """Handle a new control message, if any; returns True when one was handled."""
        path = self.role_dir / SWAP_FILE
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False
        if (stat.st_mtime_ns, stat.st_size) == self._seen:
            return False
        self._seen = (stat.st_mtime_ns, stat.st_size)
        request = _read_json(path)
        if request is None or request.get("token") == self.token:
            return False
        version = int(request["version"])
        if version != self.version:
            started = time.monotonic()
            try:
                engine = self.load(version)
            except Exception as exc:  # noqa: BLE001 - any load failure keeps the old version
                self.error = f"{type(exc).__name__}: {exc}"
                self.failed_version = version
                logger.error("could not load v%d, v%d keeps serving: %s", version, self.version,
                             self.error)
            else:
                self.install(version, engine)
                logger.info("now serving v%d (loaded in place in %.2fs)", version,
                            time.monotonic() - started)
                self.version, self.error, self.failed_version = version, None, None
        else:
            self.error, self.failed_version = None, None
        self.token = request.get("token")
        self._report()
        return True
