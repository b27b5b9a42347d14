"""Prometheus metrics of a long-running process: serve ``/metrics`` on a port from settings.

The worker (``agents/metrics.py``) and the trainer (``trainer/metrics.py``) define their own
metrics in ``prometheus_client``'s default registry and call ``serve`` from their entry points;
names follow Prometheus conventions (``cai_<what>_total`` for counters, base units such as
``_seconds``). Port 0 turns the endpoint off. A busy port is not an error: several workers on
one host all ask for the same port, so the later ones log a warning and take a free one. The
entry points bind the stack's host (``CAI_HOST``, 127.0.0.1 unless docker-compose says 0.0.0.0).
"""

from __future__ import annotations

import errno
import logging

logger = logging.getLogger(__name__)

# Loopback by default; docker-compose sets CAI_HOST=0.0.0.0 so Prometheus and the healthchecks
# reach the endpoint from other containers, and publishes no metrics port on the host.
DEFAULT_HOST = "127.0.0.1"


def serve(port: int, what: str, host: str = DEFAULT_HOST) -> int | None:
    """Serve the default registry at ``http://host:port/metrics``; returns the port it got.

    ``port`` 0 disables the endpoint (returns None). When ``port`` is taken, the server starts
    on a free port instead and says so in a warning.
    """
    from prometheus_client import start_http_server

    if not port:
        logger.info("%s: metrics disabled (port 0)", what)
        return None
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        server, _thread = start_http_server(0, addr=host)
        logger.warning("%s: metrics port %d is in use (another process on this host?); serving "
                       "metrics on port %d instead", what, port, server.server_port)
    actual = server.server_port
    logger.info("%s: metrics at http://%s:%d/metrics", what, host, actual)
    return actual
