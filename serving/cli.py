"""Serving subcommands (publish, rollback) are registered here."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add serving's subcommands to the `cai` parser."""
