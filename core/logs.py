"""The one logging setup, done by the one entry point (``python -m cai`` / ``cai``).

Modules only ever call ``logging.getLogger(__name__)``; this configures the root logger once
and quiets the chattiest libraries (Kafka clients, Faust and its ``mode`` runtime).
"""

from __future__ import annotations

import logging

NOISY = ("kafka", "aiokafka", "faust", "mode", "urllib3", "httpx")


def setup(verbose: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) for the project; WARNING for the noisy libraries."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # kafka-python warns on every SASL/PLAIN connection without TLS; the README says when that
    # is fine (loopback, the compose network) and the warning would drown every command's output.
    logging.getLogger("kafka.net.sasl.plain").setLevel(logging.ERROR)
