"""The in-place swap protocol without Triton: control file, instance answers, failures."""

from __future__ import annotations

import threading
import time

import pytest

from serving.hot_swap import (
    SwapFailed,
    SwapWatcher,
    instance_states,
    request_swap,
    served_versions,
    wait_for_swap,
)


class Engine:
    """Stands in for an instance: the engine a batch would read, swapped by the watcher."""

    def __init__(self, fail: set[int] = frozenset(), load_s: float = 0.0):
        self.engine = (1, "weights-1")
        self.fail = fail
        self.load_s = load_s
        self.loads: list[int] = []

    def load(self, version: int) -> str:
        self.loads.append(version)
        time.sleep(self.load_s)
        if version in self.fail:
            raise RuntimeError(f"v{version} does not fit")
        return f"weights-{version}"

    def install(self, version: int, engine: str) -> None:
        self.engine = (version, engine)


def watch(tmp_path, engine: Engine, **kw) -> SwapWatcher:
    return SwapWatcher(tmp_path, 1, engine.load, engine.install, poll_s=0.005, **kw).start()


def test_no_instance_means_nobody_watches(tmp_path):
    token = request_swap(tmp_path, 2)
    assert wait_for_swap(tmp_path, 2, token, timeout_s=1) is None


def test_every_instance_swaps_and_confirms(tmp_path):
    engines = [Engine(), Engine()]
    watchers = [watch(tmp_path, e) for e in engines]
    try:
        started = time.monotonic()
        states = wait_for_swap(tmp_path, 2, request_swap(tmp_path, 2), timeout_s=5)
        assert time.monotonic() - started < 1.0
        assert [s["version"] for s in states] == [2, 2]
        assert [e.engine for e in engines] == [(2, "weights-2")] * 2
        assert served_versions(tmp_path) == [2]
        # The same version again is confirmed without loading anything.
        assert wait_for_swap(tmp_path, 2, request_swap(tmp_path, 2), timeout_s=5)
        assert [e.loads for e in engines] == [[2], [2]]
    finally:
        for w in watchers:
            w.stop()
    assert instance_states(tmp_path) == []  # a stopped instance takes its answer file away


def test_a_failed_load_keeps_the_old_version_and_is_reported(tmp_path):
    engine = Engine(fail={3})
    watcher = watch(tmp_path, engine)
    try:
        wait_for_swap(tmp_path, 2, request_swap(tmp_path, 2), timeout_s=5)
        with pytest.raises(SwapFailed, match="v3 does not fit"):
            wait_for_swap(tmp_path, 3, request_swap(tmp_path, 3), timeout_s=5)
        assert engine.engine == (2, "weights-2")
        [state] = instance_states(tmp_path)
        assert state["version"] == 2 and state["failed_version"] == 3
        # Pointing back at the serving version clears the error without a load.
        token = request_swap(tmp_path, 2)
        deadline = time.monotonic() + 5
        while instance_states(tmp_path)[0]["token"] != token and time.monotonic() < deadline:
            time.sleep(0.01)
        assert instance_states(tmp_path)[0]["error"] is None and engine.loads == [2, 3]
    finally:
        watcher.stop()


def test_a_slow_load_keeps_beating_and_the_old_engine_serving(tmp_path):
    engine = Engine(load_s=0.6)
    watcher = watch(tmp_path, engine, heartbeat_s=0.05)
    try:
        token = request_swap(tmp_path, 2)
        time.sleep(0.3)
        assert engine.engine[0] == 1  # still loading: batches run the old version
        beat = instance_states(tmp_path)[0]["heartbeat"]
        assert time.time() - beat < 0.2
        assert wait_for_swap(tmp_path, 2, token, timeout_s=5)[0]["version"] == 2
        with pytest.raises(TimeoutError, match="did not take v5"):
            wait_for_swap(tmp_path, 5, "no such token", timeout_s=0.2)
    finally:
        watcher.stop()


def test_a_batch_keeps_the_engine_it_started_with(tmp_path):
    engine = Engine()
    watcher = watch(tmp_path, engine)
    seen = []

    def batch() -> None:
        version, weights = engine.engine  # what execute() does once per batch
        time.sleep(0.3)
        seen.append((version, weights))

    try:
        worker = threading.Thread(target=batch)
        worker.start()
        wait_for_swap(tmp_path, 2, request_swap(tmp_path, 2), timeout_s=5)
        worker.join()
        assert seen == [(1, "weights-1")] and engine.engine == (2, "weights-2")
    finally:
        watcher.stop()
