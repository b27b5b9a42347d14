"""The worker process never imports torch: it builds requests and reads answers through the
torch-free types of ``serving/requests.py``; only Triton's model instances load the engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What `python -m cai worker` does up to joining the consumer group: parse the command line,
# build the Faust app with every stage agent, connect the stage services (constitution, Triton
# client, Redis ledger; none of them dials out yet).
WORKER = """
import json, sys
from cai.cli import build_parser
from agents.app import create_app
from agents.settings import PipelineSettings
from core.options import given
from streams.settings import StreamSettings

args = build_parser().parse_args(["worker", "--bootstrap", "127.0.0.1:9", "--worker-id", "t"])
settings = PipelineSettings(**given(PipelineSettings, args), redis_url="redis://127.0.0.1:9/0",
                            triton_grpc="127.0.0.1:9", data_dir=sys.argv[1])
pipeline = create_app(StreamSettings(**given(StreamSettings, args)), settings)
pipeline.svc()
assert set(pipeline.agents) == {"policy", "critique", "revise", "compare"}
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers"})))
"""


def test_building_the_worker_imports_no_torch(tmp_path):
    done = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
