"""Share the machine's CPU cores among the model instances that are computing at the moment.

Triton runs each role (policy, critic, reviser, judge) in its own process. With a fixed thread count
per process, a pipeline on a small machine wastes cores whenever only one stage has work (while the
first answers are written, and while the last labels are judged), and oversubscribes them when every
stage is busy. Instead each instance marks itself busy while it executes a batch, by a file named
after its pid in a shared folder, and before every forward pass sets its torch threads to
``cores // busy instances`` (at least ``min_threads``). The marks of processes that died
mid-batch are ignored and removed.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch


def default_folder() -> Path:
    """One folder per user on this machine: every instance that shares these cores uses it."""
    return Path(tempfile.gettempdir()) / f"cai-busy-instances-{os.getuid()}"


def machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class CoreShare:
    """This process's share of ``cores``, recomputed from the busy marks in ``folder``."""

    def __init__(self, folder: Path | None = None, cores: int | None = None,
                 min_threads: int = 1) -> None:
        self.folder = Path(folder) if folder else default_folder()
        self.min_threads = max(1, min_threads)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.cores = cores or machine_cores()
        self._mark = self.folder / str(os.getpid())
        self.threads = torch.get_num_threads()

    @contextmanager
    def busy(self):
        """Mark this instance busy for the block (one batch) and take its share of the cores."""
        self._mark.touch()
        try:
            self.rebalance()
            yield
        finally:
            self._mark.unlink(missing_ok=True)

    def busy_instances(self) -> int:
        count = 0
        for entry in os.scandir(self.folder):
            if not entry.name.isdigit():
                continue
            if _alive(int(entry.name)):
                count += 1
            else:
                Path(entry.path).unlink(missing_ok=True)
        return max(1, count)

    def rebalance(self) -> int:
        """Set torch's thread count to this instance's share now; returns it."""
        threads = max(self.min_threads, self.cores // self.busy_instances())
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads
        return threads
