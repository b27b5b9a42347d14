"""`python -m trainer ...` = `cai trainer ...` (handy before the command is wired into `cai`)."""

from __future__ import annotations

import argparse
import logging
import sys

from trainer.cli import add_arguments, cmd_trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return cmd_trainer(args)


if __name__ == "__main__":
    sys.exit(main())
