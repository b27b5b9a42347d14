"""Model instances split the cores among those busy at the moment, ignore dead ones, and leave
the cores that other processes keep busy."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from serving.core_share import CoreShare, OutsideLoad, cpu_ticks


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_follow_the_number_of_busy_instances(tmp_path, restore_threads):
    share = CoreShare(tmp_path, cores=4, load=lambda: 0.0)
    with share.busy():
        assert (tmp_path / str(os.getpid())).exists()
        assert share.rebalance() == 4 and torch.get_num_threads() == 4
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            (tmp_path / str(other.pid)).touch()  # another instance starts a batch
            assert share.busy_instances() == 2
            assert share.rebalance() == 2 and torch.get_num_threads() == 2
        finally:
            other.kill()
            other.wait()
        # It died mid-batch: its mark no longer counts and is cleaned up.
        assert share.rebalance() == 4
        assert not (tmp_path / str(other.pid)).exists()
    assert list(tmp_path.iterdir()) == []  # the block's end clears this instance's mark


def test_never_below_the_minimum(tmp_path, restore_threads):
    share = CoreShare(tmp_path, cores=2, min_threads=1, load=lambda: 0.0)
    (tmp_path / "1").touch()  # pid 1 is always alive
    (tmp_path / "not-a-pid").touch()
    with share.busy():
        assert share.busy_instances() == 2
        assert share.rebalance() == 1
    assert CoreShare(tmp_path, cores=1, load=lambda: 0.0).rebalance() == 1


def test_the_engine_rebalances_before_each_forward(tiny_generator, tmp_path, restore_threads,
                                                   monkeypatch):
    from serving.requests import GenRequest

    share = CoreShare(tmp_path, cores=2, load=lambda: 0.0)
    calls = []
    monkeypatch.setattr(share, "rebalance", lambda: calls.append(1) or 2)
    tiny_generator.core_share = share
    try:
        with tiny_generator.busy():
            [[result]] = tiny_generator.generate([GenRequest("Hi", max_new_tokens=5,
                                                             temperature=0.0)])
    finally:
        tiny_generator.core_share = None
    assert len(calls) >= result.completion_tokens  # the prefill plus every decoding step


def test_cores_other_processes_keep_busy_are_not_offered(tmp_path, restore_threads):
    outside = [1.0]
    share = CoreShare(tmp_path, cores=2, load=lambda: outside[0])
    with share.busy():  # alone, but another process keeps one of the two cores busy
        assert share.rebalance() == 1 and torch.get_num_threads() == 1
        outside[0] = 0.3   # a little background work leaves the core free
        assert share.rebalance() == 2
        outside[0] = 2.0   # both taken: never below the minimum
        assert share.rebalance() == 1


def test_outside_load_is_the_machines_busy_time_less_this_process(monkeypatch):
    now = time.monotonic()
    samples = iter([(now - 10, 0.0, 0, 0),       # wall s, own CPU s, busy ticks, total ticks
                    (now, 5.0, 1500, 2000)])     # 1.5 of 2 cores busy, 0.5 of them ours
    monkeypatch.setattr(OutsideLoad, "_sample", lambda self: next(samples))
    load = OutsideLoad(cpus={0, 1}, every_s=0.0)
    assert load() == 1.0
    load.every_s = 3600.0                        # until the next update: the last figure
    assert load() == 1.0


def test_cpu_ticks_count_only_the_cpus_asked_for(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  30 0 30 300 30 0 0 0 0 0\n"
                    "cpu0 10 0 10 100 10 0 0 0 0 0\n"
                    "cpu1 20 0 20 200 20 0 0 5 0 0\n"
                    "cpu2 99 0 99 0 0 0 0 0 0 0\n"
                    "intr 12345 1 2 3\n")
    assert cpu_ticks({0, 1}, stat) == (10 + 10 + 20 + 20 + 5, 130 + 265)
    assert cpu_ticks({0}, tmp_path / "absent") is None


def test_outside_load_reads_this_machine(restore_threads):
    load = OutsideLoad(every_s=0.0)
    busy, total = cpu_ticks(load.cpus)
    assert 0 <= busy <= total
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # our own work is not counted as someone else's
        pass
    assert 0.0 <= load() <= len(load.cpus)
