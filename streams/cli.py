"""``cai topics``: create the pipeline's topics with their partition counts (idempotent)."""

from __future__ import annotations

import argparse
import json

from core.options import add_arguments, given
from streams.settings import StreamSettings


def cmd_topics(args: argparse.Namespace) -> int:
    from streams.admin import ensure_topics

    print(json.dumps(ensure_topics(StreamSettings(**given(StreamSettings, args))), indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the wire contract's command to the `cai` parser."""
    p = sub.add_parser("topics", help="create the pipeline topics with their partition counts "
                       "(idempotent)", description="Create every pipeline topic that is missing, "
                       "with the configured partitions; an existing topic is checked, never "
                       "shrunk.")
    add_arguments(p, StreamSettings, only=("kafka_bootstrap",))
    p.set_defaults(func=cmd_topics)
