"""The worker's Prometheus metrics, served by ``cai worker`` on ``PipelineSettings.metrics_port``.

* ``cai_stage_records_total{stage, event}``: records a stage read (``in``), sent (``out``),
  skipped as already done (``skipped``) and sent to dead-letter (``dead``); the same events as
  the Redis counters ``cai:count:<stage>:*``, but per process;
* ``cai_stage_batch_seconds{stage}``: time to handle one batch (decode, claim, model calls,
  send, mark done);
* ``cai_stage_batch_records{stage}``: records per batch;
* ``cai_stage_claims_in_flight{stage}``: records this worker has claimed and not yet finished;
* ``cai_stage_parked_batches{stage}``: batches waiting out an outage (Triton down or hung).
* ``cai_stage_phase_seconds{stage, phase}``: where a batch's time goes: ``decode`` (records from
  bytes), ``claim`` and ``done`` (Redis), ``process`` (the model calls), ``send`` (Kafka, until
  the broker's acks), ``count`` (Redis counters). ``cai bench --null-models`` reads it.

The model calls per role (``cai_triton_request_seconds``) are timed by ``serving/client.py``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Seconds: tiny models answer a batch in tens of milliseconds, SmolLM2 critiques take minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
EVENTS = ("in", "out", "skipped", "dead")

STAGE_RECORDS = Counter("cai_stage_records", "Records per stage and event: in (read), out "
                        "(sent), skipped (done before), dead (dead-lettered)",
                        ["stage", "event"])
BATCH_SECONDS = Histogram("cai_stage_batch_seconds", "Seconds to handle one batch of a stage",
                          ["stage"], buckets=LATENCY_BUCKETS)
BATCH_RECORDS = Histogram("cai_stage_batch_records", "Records per batch of a stage", ["stage"],
                          buckets=(1, 2, 4, 8, 16, 32, 64, 128))
CLAIMS_IN_FLIGHT = Gauge("cai_stage_claims_in_flight",
                         "Records this worker has claimed and not finished", ["stage"])
PARKED = Gauge("cai_stage_parked_batches",
               "Batches of a stage waiting out an outage (retried until the service is back)",
               ["stage"])
PHASES = ("decode", "claim", "process", "send", "done", "count")
PHASE_SECONDS = Histogram("cai_stage_phase_seconds", "Seconds one batch of a stage spent in a "
                          "phase: decode, claim, process, send, done, count", ["stage", "phase"],
                          buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                   0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0))
