"""Model instances split the cores among those busy at the moment, and ignore dead ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from serving.core_share import CoreShare


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_follow_the_number_of_busy_instances(tmp_path, restore_threads):
    share = CoreShare(tmp_path, cores=4)
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
    share = CoreShare(tmp_path, cores=2, min_threads=1)
    (tmp_path / "1").touch()  # pid 1 is always alive
    (tmp_path / "not-a-pid").touch()
    with share.busy():
        assert share.busy_instances() == 2
        assert share.rebalance() == 1
    assert CoreShare(tmp_path, cores=1).rebalance() == 1


def test_the_engine_rebalances_before_each_forward(tiny_generator, tmp_path, restore_threads,
                                                   monkeypatch):
    from serving.requests import GenRequest

    share = CoreShare(tmp_path, cores=2)
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
