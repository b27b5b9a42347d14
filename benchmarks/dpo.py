"""Benchmark one DPO step of this trainer against TRL's DPOTrainer (a script, not a test).

Both sides get the same model, preference pairs (chat format), batch size, max length,
beta, learning rate, AdamW and reference policy (LoRA: adapters disabled; full: a frozen
copy). Each side runs in its own subprocess so peak memory (VmHWM) is its own.
Reported per side: median step time (after warm-up), the peak RSS growth during the steps
above the RSS just before the first step (sampled every 2 ms), and the process's whole peak
RSS (which also counts imports: TRL pulls in datasets/pyarrow); then the ratios ours/TRL.
Our step time includes tokenising and padding the batch; TRL's includes its collator.

TRL is not a dependency of the project. Install it somewhere apart and point at it, e.g.

    pip install --no-deps --target /tmp/trl-site trl datasets ...   # see the report
    cai bench-dpo --model tiny --trl-path /tmp/trl-site
    cai bench-dpo --model smollm2 --full --steps 4 --trl-path /tmp/trl-site
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from core.options import option, to_argv


@dataclass
class DpoBenchOptions:
    model: str = option("tiny", "model spec: tiny, smollm2, a folder")
    full: bool = option(False, "full fine-tuning (default: LoRA)")
    batch_size: int = option(4, "preference pairs per step")
    steps: int = option(5, "timed steps")
    warmup: int = option(1, "untimed steps first")
    max_length: int = option(512, "tokens per prompt+answer")
    prompt_words: int = option(120, "words per prompt")
    answer_words: int = option(40, "words per answer")
    pairs: int = option(16, "distinct preference pairs")
    lr: float = option(1e-5, "learning rate")
    beta: float = option(0.1, "DPO beta")
    lora_r: int = option(8, "LoRA rank (alpha = 2r)")
    threads: int = option(1, "torch threads per side")
    precision: str = option(
        "float32", "both sides' step precision: float32, or bfloat16 (ours: trainer/precision.py; "
                   "TRL: the Trainer's bf16 autocast)", choices=("float32", "bfloat16"))
    trl_path: str | None = option(None, "folder holding trl (prepended to PYTHONPATH)")
    repeats: int = option(1, "alternate ours/TRL this many times; report each side's fastest run")
    trl_no_checkpointing: bool = option(
        False, "turn off TRL's default gradient checkpointing (ours has none)")
    precompute_ref: bool = option(
        False, "both sides compute the reference log-probs before the first step, as a round "
               "does (TRL: precompute_ref_log_probs); steps then exclude the reference pass")
    # Set by the parent for each side's child process.
    impl: str | None = option(None, argparse.SUPPRESS, choices=("ours", "trl"))
    model_path: str | None = option(None, argparse.SUPPRESS)


def make_pairs(n: int, prompt_words: int, answer_words: int) -> list[dict]:
    """Deterministic preference pairs of a controlled length."""
    words = ["the", "system", "should", "explain", "clearly", "why", "a", "request", "may", "cause",
             "harm", "and", "what", "a", "safer", "alternative", "could", "be", "for", "the",
             "person", "asking"]
    pairs = []
    for i in range(n):
        prompt = " ".join(words[(i + j) % len(words)] for j in range(prompt_words)) + f" ({i})?"
        chosen = "I can't help with that. " + " ".join(
            words[(2 * i + j) % len(words)] for j in range(answer_words))
        rejected = "Sure, here is how. " + " ".join(
            words[(3 * i + j) % len(words)] for j in range(answer_words))
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def _rss_mb() -> float:
    """Peak resident memory of this process image so far (VmHWM). Not ``ru_maxrss``: Linux keeps
    that across ``exec``, so a child started by a large parent (``cai bench`` after its
    in-process modes) would report the parent's peak."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssSampler:
    """Samples the current RSS every few ms: the peak *during the steps* above the baseline
    taken just before the first step. (ru_maxrss alone also counts imports and loading,
    and tracemalloc does not see torch's allocator.)"""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.baseline = 0.0
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.baseline = self.peak = _current_rss_mb()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _current_rss_mb())
            time.sleep(self.interval_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _current_rss_mb())
        return self.peak - self.baseline


def run_ours(args, pairs: list[dict]) -> dict:
    import torch

    from trainer.config import TrainerConfig
    from trainer.data import PreferenceExample
    from trainer.steps import PolicyLearner

    config = TrainerConfig(lora=not args.full, lr=args.lr, beta=args.beta,
                           batch_size=args.batch_size, max_length=args.max_length,
                           lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                           precision=args.precision)
    learner = PolicyLearner(args.model_path, config)
    learner.begin_round(seed=0)
    examples = [PreferenceExample(f"p{i}", p["prompt"], p["chosen"], p["rejected"], 1.0)
                for i, p in enumerate(pairs)]
    if args.precompute_ref:
        learner.precompute_reference(examples)
    sampler = RssSampler()
    sampler.start()
    times, losses, logps = [], [], []
    for step in range(args.warmup + args.steps):
        chunk = [examples[(step * args.batch_size + j) % len(examples)]
                 for j in range(args.batch_size)]
        started = time.perf_counter()
        batch = learner.preference_batch(chunk)
        metrics = learner.dpo_step(batch)
        elapsed = time.perf_counter() - started
        losses.append(metrics["loss/dpo"])
        logps.append(metrics["logps/chosen"])
        if step >= args.warmup:
            times.append(elapsed)
    growth = sampler.stop()
    del torch
    return {"times": times, "losses": losses, "logps_chosen_first": logps[0],
            "step_rss_growth_mb": growth, "peak_rss_mb": _rss_mb()}


def run_trl(args, pairs: list[dict]) -> dict:
    import torch
    from datasets import Dataset
    from datasets.table import InMemoryTable
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32)
    peft_config = None
    if not args.full:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                 bias="none", task_type="CAUSAL_LM")
    n = (args.warmup + args.steps) * args.batch_size
    rows = [pairs[i % len(pairs)] for i in range(n)]
    # An explicit fingerprint: hashing the table with dill fails on some pyarrow builds.
    dataset = Dataset(InMemoryTable.from_pydict({
        "prompt": [[{"role": "user", "content": r["prompt"]}] for r in rows],
        "chosen": [[{"role": "assistant", "content": r["chosen"]}] for r in rows],
        "rejected": [[{"role": "assistant", "content": r["rejected"]}] for r in rows],
    }), fingerprint="cai-bench-dpo")
    times: list[float] = []
    marks: dict[str, float] = {}
    sampler = RssSampler()

    class Timer(TrainerCallback):
        def on_step_begin(self, _args, state, control, **kwargs):
            if state.global_step == 0:
                sampler.start()
            marks["start"] = time.perf_counter()

        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step > args.warmup:
                times.append(time.perf_counter() - marks["start"])


    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            output_dir=out, per_device_train_batch_size=args.batch_size,
            max_steps=args.warmup + args.steps, learning_rate=args.lr, beta=args.beta,
            max_length=args.max_length, use_cpu=True, report_to=[], logging_steps=1,
            save_strategy="no", lr_scheduler_type="constant", warmup_steps=0,
            bf16=args.precision == "bfloat16",
            max_grad_norm=1.0, dataloader_num_workers=0,
            precompute_ref_log_probs=args.precompute_ref,
            seed=0, disable_tqdm=True, optim="adamw_torch", weight_decay=0.0,
            gradient_checkpointing=not args.trl_no_checkpointing,
        )
        trainer = DPOTrainer(model=model, args=config, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config,
                             callbacks=[Timer()])
        trainer.train()
        growth = sampler.stop()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"times": times, "losses": [h["loss"] for h in logs],
            "logps_chosen_first": logs[0].get("logps/chosen") if logs else None,
            "step_rss_growth_mb": growth, "peak_rss_mb": _rss_mb()}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pairs = make_pairs(args.pairs, args.prompt_words, args.answer_words)
    result = (run_ours if args.impl == "ours" else run_trl)(args, pairs)
    print("RESULT " + json.dumps(result))


def _summary(result: dict) -> dict:
    return {"median_step_s": statistics.median(result["times"]),
            "peak_rss_mb": result["peak_rss_mb"],
            "step_rss_growth_mb": result["step_rss_growth_mb"],
            "first_loss": result["losses"][0] if result["losses"] else None,
            "logps_chosen_first": result["logps_chosen_first"]}


def main(args: DpoBenchOptions) -> int:
    """``cai bench-dpo``: run both sides (each in a child process) and print the comparison."""
    if args.impl:
        child(args)
        return 0
    try:
        report = compare(args)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


def compare(args: DpoBenchOptions) -> dict:
    """Both sides, each in a child process (``cai bench-dpo --impl``); returns the comparison."""
    from core.settings import StackSettings
    from serving.models import resolve

    model_path = resolve(args.model, StackSettings().cache_dir)
    forwarded = to_argv(args)
    results: dict[str, dict] = {}
    # Alternate the two sides and keep each side's fastest run: on a shared machine the
    # load changes over minutes, and the minimum is the least disturbed measurement.
    for impl in ("ours", "trl") * args.repeats:
        env = dict(os.environ)
        if impl == "trl" and args.trl_path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.trl_path,
                                                              env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "cai", "bench-dpo", *forwarded, "--impl", impl,
               "--model-path", model_path]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"{impl} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        summary = _summary(json.loads(line[len("RESULT "):]))
        summary["runs_median_step_s"] = results.get(impl, {}).get("runs_median_step_s", []) + [
            summary["median_step_s"]]
        if impl not in results or summary["median_step_s"] < results[impl]["median_step_s"]:
            results[impl] = summary
        else:
            results[impl]["runs_median_step_s"] = summary["runs_median_step_s"]
    ours, trl = results["ours"], results["trl"]
    report = {
        "setup": {"model": args.model, "mode": "full" if args.full else f"lora r={args.lora_r}",
                  "trl_gradient_checkpointing": not args.trl_no_checkpointing,
                  "reference_precomputed": args.precompute_ref,
                  "batch_size": args.batch_size, "max_length": args.max_length,
                  "steps": args.steps, "threads": args.threads, "repeats": args.repeats},
        "ours": ours, "trl": trl,
        "ratio_step_time_ours_over_trl": ours["median_step_s"] / trl["median_step_s"],
        "ratio_peak_rss_ours_over_trl": ours["peak_rss_mb"] / trl["peak_rss_mb"],
        "ratio_step_rss_growth_ours_over_trl": (
            ours["step_rss_growth_mb"] / trl["step_rss_growth_mb"]
            if trl["step_rss_growth_mb"] > 0 else None),
    }
    return report
