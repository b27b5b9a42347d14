"""`cai stack up | status | down`: the local Kafka, Redis and Triton processes.

A service whose address is set in the settings (``CAI_KAFKA_BOOTSTRAP``,
``CAI_REDIS_URL``, ``CAI_TRITON_HTTP_URL``) is treated as external: it is health-checked
but never started or stopped here.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from core.settings import ROLES, ModelSettings, StackSettings, kafka_client_options
from serving import triton_server
from stack import kafka, redis_service
from stack.processes import ManagedProcess, ServiceError, port_in_use, rss_mib

logger = logging.getLogger(__name__)

SERVICES = ("kafka", "redis", "triton")


@dataclass
class ServiceStatus:
    name: str
    address: str
    pid: int | None
    healthy: bool
    external: bool
    log: str | None
    rss_mib: float | None = None
    start_s: float | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "name"}


def _process(settings: StackSettings, name: str) -> ManagedProcess:
    return ManagedProcess(
        name=name,
        pid_file=settings.state_dir / "pids" / f"{name}.pid",
        log_file=settings.logs_dir / f"{name}.log",
    )


def kafka_healthy(settings: StackSettings) -> bool:
    host, _, port = settings.kafka_address.partition(",")[0].rpartition(":")
    if not port_in_use(host, int(port)):
        return False
    try:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=settings.kafka_address, request_timeout_ms=3000,
            client_id="cai-health", **kafka_client_options(),
        )
        try:
            admin.list_topics()
            return True
        finally:
            admin.close()
    except Exception as exc:  # noqa: BLE001 - any client error means "not ready yet"
        logger.debug("kafka not ready: %s", exc)
        return False


def redis_healthy(settings: StackSettings) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(settings.redis_address, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def triton_healthy(settings: StackSettings) -> bool:
    url = f"http://{settings.triton_http}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


HEALTH = {"kafka": kafka_healthy, "redis": redis_healthy, "triton": triton_healthy}


def is_external(settings: StackSettings, name: str) -> bool:
    return {
        "kafka": settings.kafka_bootstrap,
        "redis": settings.redis_url,
        "triton": settings.triton_http_url,
    }[name] is not None


def _ports(settings: StackSettings, name: str) -> list[int]:
    return {
        "kafka": [settings.kafka_port, settings.kafka_controller_port],
        "redis": [settings.redis_port],
        "triton": [settings.triton_http_port, settings.triton_grpc_port,
                   settings.triton_metrics_port],
    }[name]


def _address(settings: StackSettings, name: str) -> str:
    return {
        "kafka": settings.kafka_address,
        "redis": settings.redis_address,
        "triton": f"http://{settings.triton_http}",
    }[name]


def _launch(settings: StackSettings, name: str, models: ModelSettings | None,
            roles: tuple[str, ...] = ROLES) -> tuple[list[str], Path, dict | None]:
    if name == "kafka":
        argv, _ = kafka.prepare(settings)
        return argv, settings.logs_dir / "kafka.log", None
    if name == "redis":
        argv, _ = redis_service.prepare(settings)
        return argv, settings.logs_dir / "redis.log", None
    from stack.setup_machine import backend_dir

    repository = settings.triton_repository
    repository.mkdir(parents=True, exist_ok=True)
    if models is not None:
        from serving.repository import RepositoryError, render_repository

        try:
            render_repository(repository, models, settings.cache_dir, roles=roles)
        except RepositoryError as exc:
            raise ServiceError(str(exc)) from None
    backends = triton_server.build_backend_dir(backend_dir(settings))
    argv = triton_server.command(
        repository, backends, settings.triton_http_port, settings.triton_grpc_port,
        settings.triton_metrics_port, host=settings.host,
        load=("*",) if tuple(roles) == ROLES else tuple(roles),
    )
    return argv, settings.logs_dir / "triton.log", triton_server.server_env()


FIX = {
    "kafka": "check Java 17 and the jars (`cai setup`), or remove {state}/kafka to reformat",
    "redis": "check that redis-server runs (`cai setup`)",
    "triton": "read the model errors in the log; `cai setup` rebuilds the backend folder",
}


def up(settings: StackSettings, models: ModelSettings | None = None,
       services: tuple[str, ...] = SERVICES,
       roles: tuple[str, ...] = ROLES) -> dict[str, ServiceStatus]:
    """Start every local service that is not running yet; wait until each is healthy. Triton
    loads only ``roles`` (a recipe that never calls the judge does not load it; the reward role
    is rendered and loaded only when given, ``agents.strategies.recipe_roles``)."""
    started: dict[str, float] = {}
    for name in services:
        if is_external(settings, name):
            if not HEALTH[name](settings):
                raise ServiceError(f"{name}: external service at {_address(settings, name)} is not "
                                   "healthy. Fix: start it, or unset its CAI_ address to run it "
                                   "locally.")
            continue
        proc = _process(settings, name)
        if proc.read_pid() is not None and HEALTH[name](settings):
            continue
        proc.stop()  # a stale or unhealthy leftover
        for port in _ports(settings, name):
            if port_in_use(settings.host, port):
                raise ServiceError(
                    f"{name}: port {port} on {settings.host} is already in use by another process. "
                    "Fix: stop that process, or choose another port (e.g. "
                    f"CAI_{name.upper()}_PORT)."
                )
        argv, _log, env = _launch(settings, name, models, roles)
        _, elapsed = proc.start(
            argv, lambda name=name: HEALTH[name](settings), settings.start_timeout_s,
            FIX[name].format(state=settings.state_dir), env=env,
        )
        started[name] = elapsed
    result = status(settings, services)
    for name, seconds in started.items():
        result[name].start_s = round(seconds, 2)
    return result


def status(settings: StackSettings,
           services: tuple[str, ...] = SERVICES) -> dict[str, ServiceStatus]:
    result = {}
    for name in services:
        external = is_external(settings, name)
        proc = _process(settings, name)
        pid = None if external else proc.read_pid()
        result[name] = ServiceStatus(
            name=name, address=_address(settings, name), pid=pid,
            healthy=HEALTH[name](settings), external=external,
            log=None if external else str(proc.log_file),
            rss_mib=round(rss_mib(pid), 1) if pid else None,
        )
    return result


def status_json(settings: StackSettings, statuses: dict[str, ServiceStatus]) -> dict:
    data = {name: s.as_dict() for name, s in statuses.items()}
    data["triton"].update(
        http=f"http://{settings.triton_http}", grpc=settings.triton_grpc,
        metrics=f"http://{settings.triton_metrics}/metrics",
    )
    data["kafka"]["bootstrap"] = settings.kafka_address
    data["redis"]["url"] = settings.redis_address
    return data


def down(settings: StackSettings, services: tuple[str, ...] = SERVICES) -> list[str]:
    """Stop local services in reverse start order; returns the names that were stopped."""
    stopped = []
    for name in reversed(services):
        if is_external(settings, name):
            continue
        if _process(settings, name).stop():
            stopped.append(name)
    return stopped


def print_status(settings: StackSettings, statuses: dict[str, ServiceStatus],
                 as_json: bool) -> None:
    if as_json:
        print(json.dumps(status_json(settings, statuses), indent=2))
        return
    for name, s in statuses.items():
        health = "healthy" if s.healthy else "DOWN"
        where = "external" if s.external else f"pid {s.pid or '-'}"
        extra = f"  rss {s.rss_mib:.0f} MiB" if s.rss_mib else ""
        extra += f"  started in {s.start_s:.1f}s" if s.start_s else ""
        print(f"{name:7} {health:8} {s.address:32} {where}{extra}")
        if not s.healthy and s.log:
            print(f"        log: {s.log}")
