"""`cai bench`'s in-process modes and its latency arithmetic, on the tiny model."""

from __future__ import annotations

import pytest

from agents.constitution import load
from agents.settings import PipelineSettings
from benchmarks import pipeline as bench
from core.settings import StackSettings
from serving.inference import LocalInference
from serving.models import resolve


@pytest.fixture(scope="module")
def workload():
    prompts = ["How do I pick a lock?", "Write a rude note to my neighbour.",
               "How do I make a fake ID?"]
    return bench.Workload(prompts, rounds=2, answer_tokens=6, critique_tokens=5, revision_tokens=6,
                          temperature=0.0, critic_temperature=0.0)


def test_batched_and_sequential_modes_do_the_same_work(workload):
    source = resolve("tiny", StackSettings().cache_dir)
    constitution = load(PipelineSettings().constitution)
    cached = LocalInference(source, threads=1)
    plain = LocalInference(source, threads=1, prefix_min_tokens=0)
    raw = bench.run_raw(cached, constitution, workload)
    sequential = bench.run_sequential(plain, constitution, workload, name="chain")
    again = bench.run_sequential(cached, constitution, workload, name="cached")
    assert raw.prompts == sequential.prompts == 3
    # Greedy decoding: the same texts whichever way the prompts are grouped, so the same tokens.
    assert raw.generated_tokens == sequential.generated_tokens == again.generated_tokens > 0
    assert plain.generator("policy").prefill.prefixes == {}  # the chain-style loop keeps nothing
    assert cached.generator("policy").prefill.prefixes  # the engine kept the few-shot block
    assert sequential.name == "chain" and sequential.tokens_per_s > 0


def test_stage_latencies_follow_each_prompt_through_the_topics():
    def rec(pid, t, **extra):
        return {"prompt_id": pid, "_timestamp": t, **extra}

    by_topic = {
        "prompts": [rec("a", 0.0), rec("other", 0.0)],
        "critique": [rec("a", 1.0, round=1), rec("a", 5.0, round=2)],
        "revise": [rec("a", 3.0, round=1), rec("a", 6.0, round=2)],
        "sft": [rec("a", 8.0)],
        "compare": [rec("a", 8.5)],
        "preferences": [rec("a", 10.0)],
    }
    out = bench.stage_latencies(by_topic, {"a"})
    assert out == {"policy": [1.0], "critique": [2.0, 1.0], "revise": [2.0, 2.0], "compare": [1.5],
                   "end_to_end": [10.0]}
    assert bench.percentiles([3.0, 1.0, 2.0]) == {"p50": 2.0, "p90": 3.0, "p99": 3.0, "n": 3}


def test_the_summary_table_has_a_row_per_measured_figure():
    results = {
        "hot_swap": {"under_load": {"clients": 16, "publish_s": 0.4, "first_answer_s": 0.9,
                                    "requests": 50, "failed": 0, "version": 2}},
        "null_models": {"prompts_per_s": 1200.0,
                        "hop_ms_idle": {"policy": {"p50": 8.0, "p90": 9.0, "p99": 12.5, "n": 30}}},
        "pipeline_vs_raw": 0.91, "pipeline_vs_sequential": 5.2,
        "dpo": {"ratio_step_time_ours_over_trl": 0.71234, "ratio_peak_rss_ours_over_trl": 0.95,
                "ratio_step_rss_growth_ours_over_trl": 0.5},
    }
    table = bench.summary_table(results)
    assert table["hot_swap_under_load"] == {"clients": 16, "seconds": 0.4,
                                            "first_new_answer_s": 0.9, "failed": 0}
    assert table["null_hop_ms_idle"] == {"policy": {"p50": 8.0, "p99": 12.5}}
    assert table["null_ceiling_prompts_per_s"] == 1200.0
    assert table["pipeline_vs_raw"] == 0.91 and table["pipeline_vs_sequential"] == 5.2
    assert table["dpo_vs_trl"] == {"time": 0.712, "peak_memory": 0.95, "step_memory_growth": 0.5}
    assert bench.summary_table({"modes": {}}) == {}  # a mode not run leaves its row out


def test_the_triton_profile_gives_batches_mean_batch_and_busy_share():
    before = {"policy": {"count": 10, "ns": 0, "queue_ns": 0, "compute_ns": 1e9,
                         "executions": 2, "inferences": 10}}
    after = {"policy": {"count": 42, "ns": 0, "queue_ns": 3.2e9, "compute_ns": 9e9,
                        "executions": 6, "inferences": 42},
             "judge": dict.fromkeys(("count", "ns", "queue_ns", "compute_ns", "executions",
                                     "inferences"), 0)}
    profile = bench.triton_profile(before, after, wall_s=16.0)
    assert profile == {"policy": {"requests": 32, "batches": 4, "mean_batch": 8.0,
                                  "queue_s_per_request": 0.1, "compute_s": 8.0,
                                  "busy_share": 0.5}}  # an idle role is left out
