"""The /metrics endpoint helper: off at port 0, and a busy port falls back to a free one."""

from __future__ import annotations

import logging
import socket
import urllib.request

from core import metrics


def test_port_zero_serves_nothing():
    assert metrics.serve(0, "test") is None


def test_a_busy_port_falls_back_to_a_free_one_with_a_warning(caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="core.metrics"):
            port = metrics.serve(taken, "second worker", host="127.0.0.1")
        assert port and port != taken
        assert f"metrics port {taken} is in use" in caplog.text
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b"# TYPE" in body
