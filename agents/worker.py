"""``cai worker``: create the topics, then run the Faust worker with every stage agent.

Several workers with the same app id form one consumer group and split the partitions; kill
one and the others take over its partitions (at-least-once + idempotency keys, no duplicates).
Its Prometheus metrics (``agents/metrics.py``) are served on ``--metrics-port`` (default 9101).
"""

from __future__ import annotations

import logging

from agents.app import create_app
from agents.settings import PipelineSettings
from core.metrics import serve as serve_metrics
from core.settings import StackSettings
from streams.admin import ensure_topics
from streams.settings import StreamSettings

logger = logging.getLogger(__name__)


def run(stream_settings: StreamSettings, settings: PipelineSettings,
        loglevel: str = "WARNING") -> None:
    import faust

    ensure_topics(stream_settings)
    (settings.data_dir / settings.worker_id).mkdir(parents=True, exist_ok=True)
    pipeline = create_app(stream_settings, settings)
    pipeline.svc()  # load the constitution now: a bad file fails before joining the group
    serve_metrics(settings.metrics_port, f"worker {settings.worker_id}", StackSettings().host)
    logger.info("worker %s joining group %s at %s", settings.worker_id, stream_settings.app_id,
                stream_settings.kafka_address)
    worker = faust.Worker(pipeline.app, loglevel=loglevel, override_logging=False, quiet=True)
    worker.execute_from_commandline()
