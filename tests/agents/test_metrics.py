"""The worker's Prometheus metrics follow what a stage does with a batch."""

from __future__ import annotations

from prometheus_client import REGISTRY

from agents import policy
from agents.delivery import run_batch
from tests.agents.test_agents import prompt


def _value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_records_in_out_skipped_and_batch_latency_are_counted(services):
    before = {event: _value("cai_stage_records_total", stage="policy", event=event)
              for event in ("in", "out", "skipped", "dead")}
    batches = _value("cai_stage_batch_seconds_count", stage="policy")
    await run_batch(services, policy.STAGE, [prompt("m1"), prompt("m2"), b"{not json"])
    await run_batch(services, policy.STAGE, [prompt("m1")])  # done before: skipped

    def delta(event: str) -> float:
        return _value("cai_stage_records_total", stage="policy", event=event) - before[event]

    assert (delta("in"), delta("out"), delta("skipped"), delta("dead")) == (4, 2, 1, 1)
    assert _value("cai_stage_batch_seconds_count", stage="policy") == batches + 2
    assert _value("cai_stage_batch_records_sum", stage="policy") >= 4
    assert _value("cai_stage_claims_in_flight", stage="policy") == 0  # all finished
