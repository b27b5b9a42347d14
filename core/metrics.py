"""Serve the process's Prometheus metrics at ``http://<addr>:<port>/metrics``.

The worker (``PipelineSettings.metrics_port``, env ``CAI_PIPELINE_METRICS_PORT``, 9101) and the
trainer (env ``CAI_TRAINER_METRICS_PORT``, 9102) call ``serve_metrics`` once at start; the
docker-compose healthchecks and Prometheus read that endpoint. A port in use (a second worker on
one machine) costs the metrics of that process, not the process.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def serve_metrics(port: int | None, addr: str = "127.0.0.1") -> bool:
    """Start prometheus_client's HTTP server in a daemon thread; False when it could not."""
    if not port:
        return False
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=addr)
    except OSError as exc:
        logger.warning("metrics: cannot serve on %s:%d (%s); going on without", addr, port, exc)
        return False
    logger.info("metrics on http://%s:%d/metrics", addr, port)
    return True
