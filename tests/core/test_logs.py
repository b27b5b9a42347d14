"""The logging setup keeps real Kafka client errors and drops the two records that report none."""

from __future__ import annotations

import logging

from kafka.errors import Cancelled

from core import logs


def test_kafka_noise_is_dropped_and_real_kafka_errors_are_kept(caplog):
    logs.setup()
    cluster, selector = logging.getLogger("kafka.cluster"), logging.getLogger("kafka.net.selector")
    with caplog.at_level(logging.INFO):
        cluster.error("Metadata refresh: failed %s", Cancelled())
        cluster.error("Metadata refresh: failed %s", RuntimeError("Transport closed for writes"))
        cluster.error("Metadata refresh: failed %s", RuntimeError("unexpected state"))
        cluster.error("Metadata refresh: failed %s", ConnectionError("broker down"))
        selector.warning("Task %r ran for %.3fs (>%.3fs threshold). It is blocking", "t", 0.2, 0.1)
        selector.warning("Task %s left RUNNING after step", "t")
    assert [r.getMessage() for r in caplog.records] == [
        "Metadata refresh: failed unexpected state", "Metadata refresh: failed broker down",
        "Task t left RUNNING after step"]
    logs.setup()  # a second setup adds no second filter
    assert sum(isinstance(f, logs.ExpectedKafkaNoise) for f in cluster.filters) == 1
