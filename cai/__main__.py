"""``python -m cai``: the `cai` command (cai/cli.py), the project's one entry point."""

import sys

from cai.cli import main

sys.exit(main())
