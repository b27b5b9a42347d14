"""One training round, independent of Kafka: staleness, data mix, train, probe, gate.

``RoundRunner.run`` takes the round's new examples and the held-out probe, trains the
policy (SFT on revisions mixed with helpfulness data, then soft DPO) or the preference
model, measures the probe before and after, and decides whether to promote: a round whose
probe regresses beyond ``promotion_threshold`` is rolled back to the round-start weights.
With refusal prompts the policy is also checked after every epoch, and the round keeps the
weights of the latest epoch that did not make it decline more benign prompts.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from trainer.config import TrainerConfig
from trainer.data import PreferenceExample, SFTExample
from trainer.steps import PolicyLearner, PreferenceLearner

logger = logging.getLogger(__name__)


@dataclass
class Probe:
    """Held-out examples, filled from the start of the stream and never trained on."""

    sft: list[SFTExample] = field(default_factory=list)
    preferences: list[PreferenceExample] = field(default_factory=list)

    def wants(self, example, size: int) -> bool:
        """Up to ``size`` examples per record type and prompt kind: helpful examples reach the
        trainer first (they skip revision), and a probe of the first arrivals alone would take
        most of them away from training."""
        target = self.sft if isinstance(example, SFTExample) else self.preferences
        return sum(e.kind == example.kind for e in target) < size

    def add(self, example) -> None:
        (self.sft if isinstance(example, SFTExample) else self.preferences).append(example)

    def to_json(self) -> dict:
        return {"sft": [asdict(e) for e in self.sft],
                "preferences": [asdict(e) for e in self.preferences]}

    @classmethod
    def from_json(cls, data: dict) -> Probe:
        return cls([SFTExample(**e) for e in data.get("sft", [])],
                   [PreferenceExample(**e) for e in data.get("preferences", [])])


def staleness_weight(record_version: int, current_version: int, config: TrainerConfig) -> float:
    """1.0 for fresh records, 0.0 for stale ones under 'drop', a decayed weight under
    'downweight'."""
    excess = (current_version - record_version) - config.max_staleness
    if excess <= 0:
        return 1.0
    if config.staleness_policy == "drop":
        return 0.0
    return config.stale_weight ** excess


def sft_mix_weights(examples: list[SFTExample], helpful_mix: float) -> list[float]:
    """Per-example weights giving helpfulness examples ``helpful_mix`` of the SFT loss.

    Weights average 1 over the round, so the learning rate means the same with any mix; with
    only one kind present every example keeps its own weight.
    """
    helpful = sum(1 for e in examples if e.kind == "helpful")
    other = len(examples) - helpful
    if helpful == 0 or other == 0:
        return [e.weight for e in examples]
    n = len(examples)
    scale = {True: helpful_mix * n / helpful, False: (1 - helpful_mix) * n / other}
    return [e.weight * scale[e.kind == "helpful"] for e in examples]


def refusal_rise(before: float, after: float, tolerance: float) -> str | None:
    """Why the refusal probe fails, if the declined share rose by more than ``tolerance``."""
    if after > before + tolerance + 1e-9:
        return f"probe/refusal_rate rose {before:.3f} -> {after:.3f} (> {tolerance})"
    return None


def promotion_decision(before: dict[str, float], after: dict[str, float],
                       threshold: float, refusal_tolerance: float = 0.1) -> tuple[bool, list[str]]:
    """Promote unless a probe metric regressed beyond ``threshold`` (the refusal share beyond
    ``refusal_tolerance``); return the reasons."""
    reasons = []
    key = "probe/refusal_rate"
    refusal = refusal_rise(before[key], after[key],
                           refusal_tolerance) if key in before and key in after else None
    if refusal:
        reasons.append(refusal)
    key = "probe/sft_loss"
    if key in before and key in after and after[key] > before[key] * (1 + threshold):
        reasons.append(f"{key} rose {before[key]:.4f} -> {after[key]:.4f} (> {threshold:.0%})")
    for key in ("probe/pref_accuracy", "probe/pm_accuracy"):
        if key in before and key in after and after[key] < before[key] - threshold:
            reasons.append(f"{key} fell {before[key]:.3f} -> {after[key]:.3f} (> {threshold})")
    return not reasons, reasons


@dataclass
class RoundResult:
    promoted: bool
    metrics: dict[str, float]
    reasons: list[str]


def _batches(items: list, size: int, rng: random.Random) -> list[list]:
    order = items[:]
    rng.shuffle(order)
    return [order[i:i + size] for i in range(0, len(order), size)]


class _RefusalGuard:
    """Checkpoint selection on the refusal probe: after each epoch the policy answers the
    refusal prompts; the weights of the latest epoch that declined no more of them than the
    round-start share plus the tolerance are the ones the round keeps.

    Training runs every epoch: the declined share is not monotonic in training (a decline
    habit learnt early can give way to answers once the helpful examples are learnt too).
    """

    def __init__(self, policy: PolicyLearner, prompts: list[str], config: TrainerConfig,
                 start_rate: float):
        self.policy, self.prompts, self.config = policy, prompts, config
        self.start_rate = start_rate
        # The kept weights and their declined share (the round start's until an epoch passes).
        self.kept, self.kept_epoch, self.kept_rate = policy.trainable_state(), 0, start_rate
        self.last_failure: tuple[int, str] | None = None

    def after_epoch(self, epoch: int) -> None:
        rate = self.policy.refusal_rate(self.prompts, self.config.refusal_max_new_tokens)
        failure = refusal_rise(self.start_rate, rate, self.config.refusal_tolerance)
        logger.info("epoch %d: refusal probe declined %.3f%s", epoch, rate,
                    f" ({failure})" if failure else "")
        if failure:
            self.last_failure = (epoch, failure)
        else:
            self.kept, self.kept_epoch, self.kept_rate = self.policy.trainable_state(), epoch, rate

    def finish(self, epochs: int) -> tuple[int, str | None]:
        """(epochs whose weights are kept, why later ones were not); restores those weights."""
        if self.kept_epoch == epochs:
            return epochs, None
        self.policy.load_trainable_state(self.kept)
        epoch, failure = self.last_failure
        return self.kept_epoch, (f"{failure} after epoch {epoch}; kept the weights of epoch "
                                 f"{self.kept_epoch} of {epochs}")


class RoundRunner:
    """Runs rounds on a policy learner and, in reward mode, a preference learner."""

    def __init__(self, config: TrainerConfig, policy: PolicyLearner,
                 preference: PreferenceLearner | None = None,
                 refusal_prompts: list[str] | None = None):
        if config.mode == "reward" and preference is None:
            raise ValueError("mode='reward' needs a PreferenceLearner; pass preference=...")
        self.config = config
        self.policy = policy
        self.preference = preference
        self.refusal_prompts = refusal_prompts or []

    def _evaluate(self, probe: Probe, refusal_rate: float | None = None) -> dict[str, float]:
        """Probe metrics of the current weights; ``refusal_rate`` when it was already measured on
        them."""
        pairs = probe.preferences if self.config.mode == "dpo" else []
        out = self.policy.evaluate(probe.sft, pairs)
        if self.config.mode == "reward":
            out.update(self.preference.evaluate(probe.preferences))
        if self.refusal_prompts:
            if refusal_rate is None:
                refusal_rate = self.policy.refusal_rate(self.refusal_prompts,
                                                        self.config.refusal_max_new_tokens)
            out["probe/refusal_rate"] = refusal_rate
        return out

    def _epoch_guard(self, before: dict[str, float]) -> _RefusalGuard | None:
        if not (self.refusal_prompts and self.config.refusal_every_epoch):
            return None
        return _RefusalGuard(self.policy, self.refusal_prompts, self.config,
                             before["probe/refusal_rate"])

    def run(self, round_no: int, sft: list[SFTExample], preferences: list[PreferenceExample],
            probe: Probe) -> RoundResult:
        cfg = self.config
        started = time.monotonic()
        rng = random.Random(cfg.seed * 1_000_003 + round_no)
        train_policy_sft = cfg.sft and bool(sft)
        train_dpo = cfg.mode == "dpo" and bool(preferences)
        train_pm = cfg.mode == "reward" and bool(preferences)

        self.policy.begin_round(cfg.seed + round_no)
        if self.preference is not None:
            self.preference.begin_round(cfg.seed + round_no)
        before = self._evaluate(probe)

        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)

        def record(step_metrics: dict[str, float]) -> None:
            for key, value in step_metrics.items():
                sums[key] += value
                counts[key] += 1

        weights = dict(zip((id(e) for e in sft), sft_mix_weights(sft, cfg.helpful_mix)))
        pair_epochs = cfg.epochs if cfg.dpo_epochs is None else cfg.dpo_epochs
        epochs = max(cfg.epochs, pair_epochs)
        guard = self._epoch_guard(before)
        for epoch in range(epochs):
            if train_policy_sft and epoch < cfg.epochs:
                for chunk in _batches(sft, cfg.batch_size, rng):
                    batch = self.policy.sft_batch(chunk, [weights[id(e)] for e in chunk])
                    record(self.policy.sft_step(batch))
            if train_dpo and epoch >= epochs - pair_epochs:
                for chunk in _batches(preferences, cfg.batch_size, rng):
                    record(self.policy.dpo_step(self.policy.preference_batch(chunk)))
            if train_pm and epoch >= epochs - pair_epochs:
                for chunk in _batches(preferences, cfg.batch_size, rng):
                    record(self.preference.step(self.preference.preference_batch(chunk)))
            if guard is not None:
                guard.after_epoch(epoch + 1)
        kept_epochs, stop_reason = guard.finish(epochs) if guard is not None else (epochs, None)

        after = self._evaluate(probe, guard.kept_rate if guard is not None else None)
        promoted, reasons = promotion_decision(before, after, cfg.promotion_threshold,
                                               cfg.refusal_tolerance)
        if not counts:  # e.g. only SFT records while sft=False: same weights, no new version
            promoted, reasons = False, ["nothing to train with this config"]
        elif stop_reason and kept_epochs == 0:
            promoted, reasons = False, [stop_reason]
        if stop_reason:
            logger.info("round %d: %s", round_no, stop_reason)
        self.policy.end_round(keep=promoted)
        if self.preference is not None:
            self.preference.end_round(keep=promoted)

        metrics = {key: sums[key] / counts[key] for key in sums}
        metrics.update(after)
        metrics.update({key.replace("probe/", "probe_before/"): v for key, v in before.items()})
        metrics.update({
            "data/sft_harmful": float(sum(1 for e in sft if e.kind != "helpful")),
            "data/sft_helpful": float(sum(1 for e in sft if e.kind == "helpful")),
            "data/preferences": float(len(preferences)),
            "round/promoted": float(promoted),
            "round/epochs_kept": float(kept_epochs),
            "round/epochs_planned": float(epochs),
            "time/round_s": time.monotonic() - started,
        })
        return RoundResult(promoted, metrics, reasons)
