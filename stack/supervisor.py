"""Supervise the loop's processes: restart crashed children, heal services, catch stalls.

``cai run`` (and the fault-injection harness, ``benchmarks/chaos.py``) call ``check()`` every
few seconds. Each call:

* **children** (the worker, the trainer; started by ``stack/children.py``): one that is not
  running is started again, after a backoff that doubles with each quick crash (``backoff_s``
  up to ``max_backoff_s``) and starts over once a child has stayed up ``stable_s``;
* **services** (Kafka, Redis, Triton): a local one whose process died is started again; one
  that is alive but does not answer its health check for ``service_grace_s`` raises an alarm,
  and after ``service_restart_s`` it is restarted (a hung server). External services (compose)
  only raise alarms;
* **stall watchdog**: when the worker group's lag on the stage topics is above 0 and its
  committed offsets have not moved for ``stall_s`` while no claim is in flight (Redis
  ``cai:claim:*``: nothing is being worked on, nothing is parked), the worker is stalled
  (faust-streaming has open silent-stall bugs): an alarm is raised and the worker restarted.

Alarms and restarts go to the log, to ``events`` and, best effort, to the Redis list
``cai:alarms`` (newest ``ALARMS_KEPT``) that ``cai monitor`` and the dashboard show.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.settings import ROLES, ModelSettings, StackSettings
from stack import children
from stack import services as stack_services
from streams import topics
from streams.settings import StreamSettings

logger = logging.getLogger(__name__)

ALARMS_KEY = "cai:alarms"
ALARMS_KEPT = 200
CLAIM_PATTERN = "*claim:*"


@dataclass
class _Child:
    argv: list[str]
    env: dict[str, str]
    started_at: float = 0.0
    next_start: float = 0.0
    delay: float = 0.0
    restarts: int = 0


@dataclass
class Supervisor:
    settings: StackSettings
    stream: StreamSettings
    argvs: dict[str, list[str]]
    env: dict[str, str]
    models: ModelSettings | None = None
    roles: tuple[str, ...] = ROLES
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0
    stable_s: float = 60.0
    service_grace_s: float = 20.0
    service_restart_s: float = 90.0
    stall_s: float = 120.0
    watch_services: bool = True
    clock: Callable[[], float] = time.monotonic
    events: list[dict] = field(default_factory=list)
    _children: dict[str, _Child] = field(default_factory=dict)
    _unhealthy_since: dict[str, float] = field(default_factory=dict)
    _progress: tuple | None = None
    _progress_since: float = 0.0
    _reader: object = None

    def __post_init__(self) -> None:
        now = self.clock()
        for name, argv in self.argvs.items():
            self._children[name] = _Child(list(argv), dict(self.env), started_at=now)

    # --- what the harness changes ---------------------------------------------------------
    def set_child(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Supervise ``name`` (again) with this command line; started at the next check."""
        self._children[name] = _Child(list(argv), dict(env or self.env), started_at=self.clock())

    def drop_child(self, name: str) -> None:
        """Stop supervising ``name`` (and stop it)."""
        self._children.pop(name, None)
        children.child(self.settings, name).stop(grace_s=30)

    def restarts(self) -> dict[str, int]:
        return {name: c.restarts for name, c in self._children.items()}

    # --- the checks ----------------------------------------------------------------------
    def check(self) -> None:
        """One round of every check; never raises for a service or child that is down."""
        for step in (self._check_children, self._check_services, self._check_stall):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - a failed check is retried next time
                logger.warning("supervisor: %s failed: %s", step.__name__, exc)

    def _check_children(self) -> None:
        now = self.clock()
        for name, state in self._children.items():
            proc = children.child(self.settings, name)
            if proc.read_pid() is not None:
                if state.delay and now - state.started_at >= self.stable_s:
                    state.delay = 0.0  # it stayed up: the next crash restarts at once
                continue
            if now < state.next_start:
                continue
            try:
                proc.start(state.argv, healthy=lambda: True, timeout_s=5, env=state.env,
                           fix_hint=f"read {proc.log_file}")
            except Exception as exc:  # noqa: BLE001 - exited at once: back off and retry
                logger.warning("supervisor: %s did not start: %s", name, exc)
            state.restarts += 1
            state.started_at = now
            state.delay = min(self.max_backoff_s, max(self.backoff_s, state.delay * 2))
            state.next_start = now + state.delay
            self.alarm("restart", f"{name} was not running: started it again "
                                  f"(restart {state.restarts}; next backoff {state.delay:.0f}s)")

    def _check_services(self) -> None:
        if not self.watch_services:
            return
        now = self.clock()
        for name in stack_services.SERVICES:
            if name == "triton" and self.models is None:
                continue
            if stack_services.HEALTH[name](self.settings):
                self._unhealthy_since.pop(name, None)
                continue
            external = stack_services.is_external(self.settings, name)
            alive = (not external
                     and stack_services._process(self.settings, name).read_pid() is not None)
            since = self._unhealthy_since.setdefault(name, now)
            if external:
                if now - since >= self.service_grace_s:
                    self.alarm("service", f"{name} (external) is not healthy")
                continue
            if alive and now - since < self.service_restart_s:
                if now - since >= self.service_grace_s:
                    self.alarm("service", f"{name} is running but does not answer its health "
                                          f"check ({now - since:.0f}s)", once_per_s=30)
                continue
            why = "is hung" if alive else "is not running"
            self.alarm("service", f"{name} {why}: restarting it")
            if alive:
                stack_services.down(self.settings, (name,))
            stack_services.up(self.settings, self.models, services=(name,), roles=self.roles)
            self._unhealthy_since.pop(name, None)

    def _lag_and_offsets(self) -> tuple[int, tuple]:
        from streams.topic_stats import TopicReader

        if self._reader is None:
            self._reader = TopicReader(self.stream.kafka_address)
        reader = self._reader
        try:
            committed = reader.committed(self.stream.app_id)
            lag = sum(reader.backlog(topics.topic_name(t, self.stream), self.stream.app_id)
                      for t in (topics.PROMPTS, topics.CRITIQUE, topics.REVISE, topics.COMPARE))
        except Exception:
            self._reader = None
            reader.close()
            raise
        return lag, tuple(sorted((f"{tp.topic}/{tp.partition}", o) for tp, o in committed.items()))

    def claims_in_flight(self) -> int:
        import redis

        store = redis.Redis.from_url(self.settings.redis_address, socket_timeout=3)
        return sum(1 for _ in store.scan_iter(match=CLAIM_PATTERN, count=1000))

    def _check_stall(self) -> None:
        if "worker" not in self._children:
            return
        now = self.clock()
        lag, offsets = self._lag_and_offsets()
        progress = (offsets, lag == 0)
        if progress != self._progress or lag == 0:
            self._progress, self._progress_since = progress, now
            return
        if now - self._progress_since < self.stall_s:
            return
        if self.claims_in_flight():
            return  # work in flight (or parked on an outage): not a stall
        self.alarm("stall", f"the worker's lag ({lag}) has not moved for "
                            f"{now - self._progress_since:.0f}s with nothing in flight: "
                            "restarting the worker")
        children.child(self.settings, "worker").stop(grace_s=10)
        self._progress_since = now

    # --- alarms --------------------------------------------------------------------------
    def alarm(self, kind: str, message: str, once_per_s: float = 0.0) -> None:
        now = time.time()
        if once_per_s and any(e["kind"] == kind and e["message"].split(" (")[0]
                              == message.split(" (")[0] and now - e["time"] < once_per_s
                              for e in self.events[-20:]):
            return
        event = {"time": now, "kind": kind, "message": message}
        self.events.append(event)
        del self.events[:-1000]
        logger.warning("supervisor: %s: %s", kind, message)
        try:
            import redis

            store = redis.Redis.from_url(self.settings.redis_address, socket_timeout=2)
            with store.pipeline(transaction=True) as pipe:
                pipe.rpush(ALARMS_KEY, json.dumps(event))
                pipe.ltrim(ALARMS_KEY, -ALARMS_KEPT, -1)
                pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis may be the service that is down
            logger.debug("alarm not stored in Redis: %s", exc)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def recent_alarms(settings: StackSettings, count: int = 10) -> list[dict]:
    """The newest alarms (oldest first), or [] when Redis cannot be read."""
    import redis

    try:
        raw = redis.Redis.from_url(settings.redis_address, socket_timeout=2).lrange(
            ALARMS_KEY, -count, -1)
    except redis.RedisError:
        return []
    out = []
    for item in raw:
        try:
            event = json.loads(item)
        except (ValueError, RecursionError):
            continue
        if isinstance(event, dict):
            out.append(event)
    return out
