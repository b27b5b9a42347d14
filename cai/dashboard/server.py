"""`cai dashboard`: serve the web dashboard on this machine (uvicorn), until Ctrl-C.

    cai dashboard                              # http://127.0.0.1:8090/ (env CAI_DASHBOARD_PORT)
    cai dashboard --port 8091 --report reports/run.json

It reads Kafka and Redis like ``cai monitor`` (so it works against docker-compose with
``CAI_KAFKA_BOOTSTRAP`` and ``CAI_REDIS_URL``), and the trainer's round folders when they are on
this machine. ``cai run`` starts it as a child process and prints its address.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.options import option
from core.settings import StackSettings
from streams.settings import StreamSettings

logger = logging.getLogger(__name__)


class DashboardSettings(BaseSettings):
    """Where the dashboard listens (env prefix ``CAI_DASHBOARD_``)."""

    model_config = SettingsConfigDict(env_prefix="CAI_DASHBOARD_", extra="ignore")

    port: int = Field(8090, ge=0, le=65535,
                      description="port of the dashboard; a busy port falls back to a free one")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 in a container)")


@dataclass
class DashboardOptions:
    report: Path | None = option(None, "a `cai run` report (JSON): its held-out figures per "
                                       "version join the learning curve; re-read when it changes")
    trainer_dir: Path | None = option(None, "the trainer's folder, for which round trained on each "
                                            "prompt (default <state-dir>/trainer)")
    window: int = option(2000, "newest records kept per topic for the views")


def free_or_other(host: str, port: int) -> int:
    """``port`` if it can be bound on ``host``, else a free port (0 also asks for a free one)."""
    for candidate in ((port, 0) if port else (0,)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError(f"no free port on {host}")


def url(host: str, port: int) -> str:
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"


def run(settings: DashboardSettings, options: DashboardOptions, stack: StackSettings,
        stream: StreamSettings) -> None:
    import uvicorn

    from cai.dashboard.app import create_app
    from cai.dashboard.collector import Collector
    from stack import web_assets
    from stack.processes import ServiceError

    chart_js = web_assets.asset_path(stack, web_assets.CHART_JS, "dist/chart.umd.js")
    if not web_assets.ready(stack):
        # `cai setup` fetches it; a container whose cache volume is new fetches it here, once.
        try:
            web_assets.ensure(stack)
        except ServiceError as exc:
            logger.warning("Chart.js is missing (%s), so the charts stay empty: %s", chart_js, exc)
    port = free_or_other(settings.host, settings.port)
    if settings.port and port != settings.port:
        logger.warning("dashboard: port %d is in use; serving on %d instead", settings.port, port)
    collector = Collector(stack, stream, options.trainer_dir or stack.state_dir / "trainer",
                          options.report, window=options.window).start()
    app = create_app(collector, chart_js)
    print(f"dashboard: {url(settings.host, port)} (Kafka {stream.kafka_address}, topics "
          f"{stream.topic_prefix}*, Redis {stack.redis_address})", flush=True)
    config = uvicorn.Config(app, host=settings.host, port=port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=2)
    try:
        uvicorn.Server(config).run()
    finally:
        collector.stop()
