"""Held-out evaluation of each served policy version, started as soon as the version is published.

A published version's weights never change, so `cai run` need not wait for the end of the stream
to evaluate it. Each evaluation runs in a child process (``python -m cai.evaluations``) with one
thread under ``SCHED_IDLE``: it takes only CPU time that nothing else in the stack wants (during
a round the trainer's steps use one core and often leave the other idle), so the live loop runs
as fast as without it. After the stream, what is left runs at normal priority, two processes at
a time, or one on both cores when it is the last. Each child writes its result to a JSON file; a
child that fails leaves its log, and the caller evaluates that version itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

CORES = 2  # evaluation processes at a time after the stream (one thread each)


@dataclass
class _Job:
    version: int
    source: str
    process: subprocess.Popen | None = None
    started: float = 0.0
    idle: bool = True  # started under SCHED_IDLE (while the stream ran)


@dataclass
class Evaluations:
    """Evaluations of policy versions by child processes, results in ``folder``."""

    folder: Path
    harmful: list[str]
    benign: list[str]
    max_new_tokens: int
    progress: Callable[[str], None] = print
    _queue: list[_Job] = field(default_factory=list)
    _running: list[_Job] = field(default_factory=list)
    _offered: set[int] = field(default_factory=set)
    _results: dict[int, dict | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob("v*.json"):  # from an earlier run in this state folder
            stale.unlink()
        self._sets = self.folder / "sets.json"
        self._sets.write_text(json.dumps({"harmful": self.harmful, "benign": self.benign}))

    def offer(self, version: int, source: str) -> None:
        """Queue ``version`` (weights at ``source``) unless it was offered before."""
        if version not in self._offered:
            self._offered.add(version)
            self._queue.append(_Job(version, source))

    def poll(self) -> None:
        """While the stream runs: start the next queued evaluation when none is running."""
        self._reap()
        if self._queue and not self._running:
            job = self._queue.pop(0)
            self.progress(f"cai run: evaluating policy v{job.version} on held-out prompts in the "
                          "background (on CPU time the stack leaves idle)")
            self._start(job, idle=True, threads=1)

    def finish(self) -> dict[int, dict | None]:
        """After the stream: run what is left, wait for all, return each version's result
        (None when its child failed; the caller then evaluates it itself)."""
        for job in self._running:  # the stream is over: nothing left to yield to
            try:
                os.sched_setscheduler(job.process.pid, os.SCHED_OTHER, os.sched_param(0))
            except OSError:  # not permitted: it still has a core to itself
                pass
        while self._queue or self._running:
            self._reap()
            while self._queue and len(self._running) < CORES:
                job = self._queue.pop(0)
                alone = not self._running and not self._queue
                self.progress(f"cai run: evaluating policy v{job.version} on {len(self.harmful)} "
                              f"held-out harmful and {len(self.benign)} held-out benign prompts")
                self._start(job, idle=False, threads=CORES if alone else 1)
            time.sleep(0.5)
        return dict(self._results)

    def stop(self) -> None:
        """End every child (a run that stops early leaves none behind)."""
        for job in self._running:
            job.process.kill()
            job.process.wait()
        self._running = []

    def _start(self, job: _Job, idle: bool, threads: int) -> None:
        out = self.folder / f"v{job.version}.json"
        argv = [sys.executable, "-m", "cai.evaluations", job.source, str(self._sets), str(out),
                "--max-new-tokens", str(self.max_new_tokens)] + (["--idle"] if idle else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with open(self._log(job), "ab") as log:
            job.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        job.started, job.idle = time.monotonic(), idle
        self._running.append(job)
        logger.debug("evaluating policy v%d (pid %d, %s)", job.version, job.process.pid,
                    "in the background" if idle else f"{threads} thread(s)")

    def _reap(self) -> None:
        """Collect the children that ended, with their results."""
        done = [job for job in self._running if job.process.poll() is not None]
        self._running = [job for job in self._running if job not in done]
        for job in done:
            self._results[job.version] = result = self._result(job)
            self.progress(f"cai run: policy v{job.version} evaluated in "
                          f"{time.monotonic() - job.started:.0f}s"
                          + (" in the background" if job.idle else "")
                          + ("" if result else f"; it failed (see {self._log(job)}), so it is "
                             "evaluated again in the foreground"))

    def _log(self, job: _Job) -> Path:
        return self.folder / f"v{job.version}.log"

    def _result(self, job: _Job) -> dict | None:
        path = self.folder / f"v{job.version}.json"
        if job.process.returncode != 0 or not path.exists():
            return None
        return json.loads(path.read_text())


def _evaluate(argv: list[str] | None = None) -> None:
    """The child: evaluate one policy version and write the result atomically."""
    parser = argparse.ArgumentParser(prog="python -m cai.evaluations",
                                     description="Evaluate one policy version on held-out "
                                                 "prompts (a child of `cai run`).")
    parser.add_argument("source", help="the version's weights: a folder or a model name")
    parser.add_argument("sets", type=Path, help="JSON file with 'harmful' and 'benign' prompts")
    parser.add_argument("out", type=Path, help="where to write the result (JSON)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--idle", action="store_true",
                        help="run under SCHED_IDLE: only on CPU time nothing else wants")
    args = parser.parse_args(argv)
    if args.idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    from scoring import evaluate

    sets = json.loads(args.sets.read_text())
    result = evaluate.evaluate_policy(args.source, sets["harmful"], sets["benign"],
                                      args.max_new_tokens)
    partial = args.out.with_suffix(".partial")
    partial.write_text(json.dumps(result))
    partial.replace(args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _evaluate()
