"""Share the machine's CPU cores among the model instances that are computing at the moment.

Triton runs each role (policy, critic, reviser, judge) in its own process. With a fixed thread count
per process, a pipeline on a small machine wastes cores whenever only one stage has work (while the
first answers are written, and while the last labels are judged), and oversubscribes them when every
stage is busy. Instead each instance marks itself busy while it executes a batch, by a file named
after its pid in a shared folder, and before every forward pass sets its torch threads to
``cores // busy instances`` (at least ``min_threads``). The marks of processes that died
mid-batch are ignored and removed.

Cores that other processes keep busy are not offered either (``OutsideLoad``, from /proc/stat): a
torch thread on a core another process is using waits at every parallel step for the thread that
is not running. On two cores with one of them in use elsewhere, 2 answers of 128 tokens with the
tiny model took 0.3-0.45 s on one thread and up to 3-5 s on two; at nice 19, 2 answers of 64
tokens took 0.27 s on one thread and 17-19 s on two.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch


def default_folder() -> Path:
    """One folder per user on this machine: every instance that shares these cores uses it."""
    return Path(tempfile.gettempdir()) / f"cai-busy-instances-{os.getuid()}"


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def machine_cores() -> int:
    return len(_affinity())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def cpu_ticks(cpus: set[int], stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(busy, total) clock ticks of ``cpus`` since boot; None where ``stat`` cannot be read."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        # user nice system idle iowait irq softirq steal (guest time is inside user already)
        ticks = [int(v) for v in rest.split()[:8]]
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


class OutsideLoad:
    """How many of ``cpus`` other processes keep busy: the machine's busy time less this
    process's own, averaged over at least ``every_s`` (between updates, the last figure).
    0 where the machine's CPU times cannot be read."""

    def __init__(self, cpus: set[int] | None = None, every_s: float = 0.5) -> None:
        self.cpus = set(cpus) if cpus is not None else _affinity()
        self.every_s = every_s
        self.cores = 0.0
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, int, int] | None:
        """(wall s, this process's CPU s, the cpus' busy ticks, their total ticks)."""
        ticks = cpu_ticks(self.cpus)
        return None if ticks is None else (time.monotonic(), time.process_time(), *ticks)

    def __call__(self) -> float:
        if self._last is None or time.monotonic() - self._last[0] < self.every_s:
            return self.cores
        now = self._sample()
        if now is None:
            return self.cores
        wall, own, busy, total = (b - a for a, b in zip(self._last, now))
        if wall > 0 and total > 0:
            self.cores = max(0.0, busy / total * len(self.cpus) - own / wall)
        self._last = now
        return self.cores


class CoreShare:
    """This process's share of ``cores``, recomputed from the busy marks in ``folder`` and the
    cores other processes keep busy (``load``: a callable giving that in cores)."""

    def __init__(self, folder: Path | None = None, cores: int | None = None,
                 min_threads: int = 1, load: Callable[[], float] | None = None) -> None:
        self.folder = Path(folder) if folder else default_folder()
        self.min_threads = max(1, min_threads)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.cores = cores or machine_cores()
        self.load = load if load is not None else OutsideLoad()
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
        taken = int(self.load() + 0.5)  # a core kept at least half busy by others is taken
        threads = max(self.min_threads,
                      min(self.cores // self.busy_instances(), self.cores - taken))
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads
        return threads
