"""The one logging setup, done by the one entry point (``python -m cai`` / ``cai``).

Modules only ever call ``logging.getLogger(__name__)``; this configures the root logger once
and quiets the chattiest libraries (Kafka clients, Faust and its ``mode`` runtime).
"""

from __future__ import annotations

import logging

NOISY = ("kafka", "aiokafka", "faust", "mode", "urllib3", "httpx")


def _closing(arg) -> bool:
    """A metadata refresh's failure that only says its client was closing: the request was
    cancelled, or its connection was already closed for writes."""
    return (type(arg).__name__ == "Cancelled"
            or (isinstance(arg, RuntimeError) and str(arg) == "Transport closed for writes"))


class ExpectedKafkaNoise(logging.Filter):
    """Drops two kafka-python records that report no fault: a metadata refresh "failed" because
    its client was closing (logged at ERROR), and the warning that an event-loop task ran long,
    which on two busy cores only says the CPU is shared."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if record.name == "kafka.cluster" and message.startswith("Metadata refresh: failed"):
            return not any(_closing(arg) for arg in record.args or ())
        return not (record.name == "kafka.net.selector" and " ran for " in message)


def setup(verbose: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) for the project; WARNING for the noisy libraries."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # kafka-python warns on every SASL/PLAIN connection without TLS; the README says when that
    # is fine (loopback, the compose network) and the warning would drown every command's output.
    logging.getLogger("kafka.net.sasl.plain").setLevel(logging.ERROR)
    if not verbose:
        for name in ("kafka.cluster", "kafka.net.selector"):
            logger = logging.getLogger(name)
            if not any(isinstance(f, ExpectedKafkaNoise) for f in logger.filters):
                logger.addFilter(ExpectedKafkaNoise())
