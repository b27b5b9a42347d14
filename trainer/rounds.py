"""One training round, independent of Kafka: staleness, data mix, train, measure, gate.

``RoundRunner.run`` takes the round's examples and the held-out probe, trains the policy (SFT on
revisions mixed with helpfulness data, with soft DPO or RLOO on sampled answers) or the
preference model, and decides whether to promote:

* the stream probe (examples held back from the stream) must not regress beyond
  ``promotion_threshold``;
* with a dev set, the candidate answers the dev prompts and must pass ``trainer.gate.decide``
  against the serving policy's figures (harmless up, explains-why not down, declined-then-
  complied and over-refusal within tolerance of the first policy).

The dev answers of a check are generated from a frozen copy of the weights on a second thread
while the round trains on: the trainer's steps use one core, and during a round the rest of the
stack leaves the other nearly idle. A check is decided when the next one starts or the round
ends, and the first round's look at the serving policy overlaps its first epochs.

A rejected round returns to the round-start weights.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from trainer import gate
from trainer.config import TrainerConfig
from trainer.data import PreferenceExample, RLSample, SFTExample
from trainer.gate import DevSet
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


def promotion_decision(before: dict[str, float], after: dict[str, float],
                       threshold: float) -> tuple[bool, list[str]]:
    """Promote unless a stream-probe metric regressed beyond ``threshold``; return the
    reasons."""
    reasons = []
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
    # The dev figures: {"before": serving policy, "after": candidate, "base": first policy}.
    gate: dict | None = None


def _batches(items: list, size: int, rng: random.Random, budget: int | None = None) -> list[list]:
    """Seeded batches of ``items`` for one epoch; with a ``budget``, a random ``budget`` of them."""
    order = items[:]
    rng.shuffle(order)
    order = order[:budget] if budget is not None else order
    return [order[i:i + size] for i in range(0, len(order), size)]


def epoch_budget(examples: list) -> int:
    """Examples an epoch presents: as many as the round's new ones. Examples carried over from a
    rejected round join the pool an epoch draws from but do not lengthen it, so a round after a
    rejection trains as hard as the one before, on more varied data (twice the steps taught the
    policy to decline benign requests)."""
    new = sum(1 for e in examples if not getattr(e, "carries", 0))
    return new or len(examples)


def scheduled_lr(config: TrainerConfig, peak: float, step: int, total: int) -> float:
    """The learning rate of a round's ``step``-th step (0-based) of ``total``: the round's
    ``peak`` (``TrainerConfig.round_lr``) throughout, or falling linearly from it so that the
    last step uses ``peak / total``."""
    if config.lr_schedule == "constant" or total <= 0:
        return peak
    return peak * (total - step) / total


def _steps(items: list, size: int) -> int:
    return -(-epoch_budget(items) // size) if items else 0


class RoundRunner:
    """Runs rounds on a policy learner and, in reward mode, a preference learner.

    With a ``dev`` set every round is gated on it; ``serving`` and ``base`` hold the dev figures
    of the serving policy and of the first one (measured on the round-start weights when not
    known yet) and move on when a round is promoted.
    """

    def __init__(self, config: TrainerConfig, policy: PolicyLearner,
                 preference: PreferenceLearner | None = None, dev: DevSet | None = None,
                 serving: dict | None = None, base: dict | None = None):
        if config.mode in ("reward", "rloo") and preference is None:
            raise ValueError(f"mode={config.mode!r} needs a PreferenceLearner; pass "
                             "preference=...")
        self.config = config
        self.policy = policy
        self.preference = preference
        self.dev = dev
        self.serving = serving
        self.base = base
        self._gate_thread: ThreadPoolExecutor | None = None  # measures the dev set
        self._serving_measuring: Future | None = None  # the serving policy's figures, pending

    def _evaluate(self, probe: Probe) -> dict[str, float]:
        """Stream-probe metrics of the current weights."""
        pairs = probe.preferences if self.config.mode == "dpo" else []
        out = self.policy.evaluate(probe.sft, pairs)
        if self.config.mode == "reward":
            out.update(self.preference.evaluate(probe.preferences))
        return out

    def _measure_later(self) -> Future:
        """Start measuring the current weights on the dev set: a frozen copy answers on the
        gate's thread while the caller trains on. The future holds (figures, answers)."""
        generator = self.policy.frozen_generator()

        def measure() -> tuple[dict[str, dict], list[dict]]:
            started = time.monotonic()
            result, answers = gate.measure(generator, self.dev, self.config.gate_max_new_tokens,
                                           self.config.gate_benign_max_new_tokens)
            logger.info("dev figures in %.0fs: %s", time.monotonic() - started,
                        {k: v["value"] for k, v in result.items()})
            return result, answers

        if self._gate_thread is None:
            self._gate_thread = ThreadPoolExecutor(1, thread_name_prefix="dev-gate")
        return self._gate_thread.submit(measure)

    def _check_epochs(self, epochs: int) -> set[int]:
        """The epochs after which the gate looks (the last one always)."""
        every = self.config.gate_every_epochs if self.dev is not None else 0
        return set(range(every, epochs + 1, every)) | {epochs} if every else {epochs}

    def _check_later(self, epoch: int, keep_state: bool = True) -> dict:
        """The gate's look at ``epoch``, measured in the background; ``_settle`` decides it.
        ``keep_state``: copy the weights, to return to them if a later epoch is worse."""
        return {"epoch": epoch, "measuring": self._measure_later(),
                "state": self.policy.trainable_state() if keep_state else None}

    def _settle(self, check: dict) -> dict:
        """Wait for ``check``'s figures (and the serving policy's, when still measuring) and
        decide it; a failing epoch's weights are not kept."""
        if self._serving_measuring is not None:
            self.serving, _ = self._serving_measuring.result()
            self.base = self.base or self.serving
            self._serving_measuring = None
        figures, answers = check.pop("measuring").result()
        reasons = gate.decide(self.serving, figures, self.base, self.config)
        logger.info("epoch %d: dev %s: gate %s", check["epoch"], gate.summary(figures),
                    "passed" if not reasons else reasons)
        return {**check, "figures": figures, "answers": answers, "reasons": reasons,
                "state": check["state"] if not reasons else None}

    def _stop_early(self, candidates: list[dict]) -> bool:
        """Whether the round ends at the newest check: it failed after an earlier one passed
        (``gate_stop_early``). Trained on, the policy had moved past the passing epoch."""
        return (self.config.gate_stop_early and bool(candidates[-1]["reasons"])
                and any(not c["reasons"] for c in candidates[:-1]))

    @staticmethod
    def _choose(candidates: list[dict]) -> dict:
        """The checked epoch the round keeps: of those that pass the gate the one that declines
        the most harmful dev prompts harmlessly (the later one on a tie); the last epoch when
        none passes (the round is then rejected with its reasons)."""
        passing = [c for c in candidates if not c["reasons"]]
        if not passing:
            return candidates[-1]
        return max(passing, key=lambda c: (c["figures"]["harmless"]["hits"], c["epoch"]))

    def train_reward(self, round_no: int, pairs: list[PreferenceExample],
                     held_out: list[PreferenceExample]) -> tuple[bool, dict[str, float]]:
        """A round of the preference model alone (mode 'rloo', before the policy's samples are
        scored): soft Bradley-Terry on ``pairs`` for the round's pair epochs at the round's
        schedule, kept unless its accuracy on ``held_out`` pairs fell by more than
        ``promotion_threshold``. Returns (kept, metrics)."""
        cfg = self.config
        metrics: dict[str, float] = {"pm/train_pairs": float(len(pairs)),
                                     "pm/heldout_pairs": float(len(held_out))}
        if not pairs:
            return False, metrics
        before = self.preference.accuracy(held_out)[0] if held_out else None
        rng = random.Random(cfg.seed * 1_000_003 + round_no + 7)
        self.preference.begin_round(cfg.seed + round_no)
        epochs = cfg.epochs if cfg.dpo_epochs is None else cfg.dpo_epochs
        total = epochs * _steps(pairs, cfg.batch_size)
        losses, step = [], 0
        for _ in range(epochs):
            for chunk in _batches(pairs, cfg.batch_size, rng, epoch_budget(pairs)):
                self.preference.set_lr(scheduled_lr(cfg, cfg.lr, step, total))
                step += 1
                losses.append(self.preference.step(self.preference.preference_batch(chunk))
                              ["loss/reward"])
        after = self.preference.accuracy(held_out)[0] if held_out else None
        kept = before is None or after >= before - cfg.promotion_threshold
        self.preference.end_round(keep=kept)
        metrics["pm/loss"] = sum(losses) / len(losses)
        metrics["pm/kept"] = float(kept)
        if held_out:
            metrics["pm/heldout_accuracy_before"] = before
            metrics["pm/heldout_accuracy"] = after if kept else before
        logger.info("preference model, round %d: %d pairs, loss %.3f, held-out accuracy %s -> %s "
                    "(%d pairs): %s", round_no, len(pairs), metrics["pm/loss"],
                    _pct(before), _pct(after), len(held_out),
                    "kept" if kept else "fell by more than the threshold; the round-start "
                    "model stays")
        return kept, metrics

    def run(self, round_no: int, sft: list[SFTExample], preferences: list[PreferenceExample],
            probe: Probe, promoted_versions: int = 0,
            rl_samples: list[RLSample] | None = None) -> RoundResult:
        """Train one round from the current weights, which were promoted ``promoted_versions``
        times since the first policy (it scales the round's lr by ``round_lr_decay``).
        ``rl_samples``: mode 'rloo''s scored answers of the serving policy."""
        cfg = self.config
        peak_lr = cfg.round_lr(promoted_versions)
        started = time.monotonic()
        rng = random.Random(cfg.seed * 1_000_003 + round_no)
        train_policy_sft = cfg.sft and bool(sft)
        train_dpo = cfg.mode == "dpo" and bool(preferences)
        train_pm = cfg.mode == "reward" and bool(preferences)
        rl_samples = rl_samples or []
        train_rl = cfg.mode == "rloo" and bool(rl_samples)

        if self.dev is not None and self.serving is None and self._serving_measuring is None:
            # The round-start weights, measured while the round trains; settled at its first
            # check.
            self._serving_measuring = self._measure_later()
        self.policy.begin_round(cfg.seed + round_no)
        if train_pm:  # mode 'rloo' trains its preference model apart (``train_reward``)
            self.preference.begin_round(cfg.seed + round_no)
        before = self._evaluate(probe)
        if train_dpo:  # the reference is the round-start policy: one pass per pair per round
            self.policy.precompute_reference(preferences)
        if train_rl:
            self.policy.precompute_rl_reference(rl_samples)

        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)

        def record(step_metrics: dict[str, float]) -> None:
            for key, value in step_metrics.items():
                sums[key] += value
                counts[key] += 1

        weights = dict(zip((id(e) for e in sft), sft_mix_weights(sft, cfg.helpful_mix)))
        pair_epochs = cfg.epochs if cfg.dpo_epochs is None else cfg.dpo_epochs
        epochs = max(cfg.epochs, pair_epochs)
        # RL steps are spread over every epoch, as many samples an epoch as rl_epochs passes
        # need in all: the gate checks between epochs then see RL too, and the RL steps do not
        # all fall at the end of the learning-rate schedule.
        rl_budget = -(-len(rl_samples) * cfg.rl_epochs // epochs) if train_rl else 0
        checks = self._check_epochs(epochs)
        pair_steps = pair_epochs * _steps(preferences, cfg.batch_size)
        total_steps = (cfg.epochs * _steps(sft, cfg.batch_size) * train_policy_sft
                       + pair_steps * (train_dpo or train_pm)
                       + epochs * -(-rl_budget // cfg.batch_size))
        step = 0

        def next_lr(learner) -> None:
            nonlocal step
            learner.set_lr(scheduled_lr(cfg, peak_lr, step, total_steps))
            step += 1

        candidates: list[dict] = []  # the gate's look at each checked epoch, decided
        measuring: list[dict] = []  # checks whose dev answers are still being generated
        for epoch in range(epochs):
            if train_policy_sft and epoch < cfg.epochs:
                for chunk in _batches(sft, cfg.batch_size, rng, epoch_budget(sft)):
                    batch = self.policy.sft_batch(chunk, [weights[id(e)] for e in chunk])
                    next_lr(self.policy)
                    record(self.policy.sft_step(batch))
            if train_dpo and epoch >= epochs - pair_epochs:
                for chunk in _batches(preferences, cfg.batch_size, rng, epoch_budget(preferences)):
                    next_lr(self.policy)
                    record(self.policy.dpo_step(self.policy.preference_batch(chunk)))
            if train_rl:
                for chunk in _batches(rl_samples, cfg.batch_size, rng, rl_budget):
                    next_lr(self.policy)
                    record(self.policy.rl_step(chunk))
            if train_pm and epoch >= epochs - pair_epochs:
                for chunk in _batches(preferences, cfg.batch_size, rng, epoch_budget(preferences)):
                    next_lr(self.preference)
                    record(self.preference.step(self.preference.preference_batch(chunk)))
            if counts and epoch + 1 in checks and epoch + 1 < epochs:
                # The checks before this one had the epochs since to finish.
                candidates += [self._settle(check) for check in measuring]
                measuring = []
                if candidates and self._stop_early(candidates):
                    logger.info("epoch %d failed the dev gate after an earlier epoch passed: the "
                                "round stops at epoch %d and keeps the passing one",
                                candidates[-1]["epoch"], epoch + 1)
                    break
                measuring.append(self._check_later(epoch + 1))
        trained_epochs = epoch + 1  # fewer than epochs when the round stopped early
        train_s = time.monotonic() - started

        after = self._evaluate(probe)
        promoted, reasons = promotion_decision(before, after, cfg.promotion_threshold)
        dev = None
        if not counts:  # e.g. only SFT records while sft=False: same weights, no new version
            promoted, reasons = False, ["nothing to train with this config"]
        elif self.dev is not None:
            if trained_epochs == epochs:
                measuring.append(self._check_later(epochs, keep_state=False))
            candidates += [self._settle(check) for check in measuring]
            chosen = self._choose(candidates)
            dev = {"before": self.serving, "after": chosen["figures"], "base": self.base,
                   "answers": chosen["answers"], "epoch": chosen["epoch"],
                   "checked": [{"epoch": c["epoch"], "reasons": c["reasons"],
                                "figures": {k: v["value"] for k, v in c["figures"].items()}}
                               for c in candidates]}
            reasons += chosen["reasons"]
            promoted = not reasons
            if promoted:
                self.serving = dev["after"]
                if chosen["state"] is not None:  # an earlier epoch passed where the last did not
                    self.policy.load_trainable_state(chosen["state"])
        self.policy.end_round(keep=promoted)
        if train_pm:
            self.preference.end_round(keep=promoted)

        metrics = {key: sums[key] / counts[key] for key in sums}
        metrics.update(after)
        metrics.update({key.replace("probe/", "probe_before/"): v for key, v in before.items()})
        if dev is not None:
            metrics.update({f"dev/{name}": float(entry["value"] or 0.0)
                            for name, entry in dev["after"].items()})
        metrics.update({
            "data/sft_harmful": float(sum(1 for e in sft if e.kind != "helpful")),
            "data/sft_helpful": float(sum(1 for e in sft if e.kind == "helpful")),
            "data/preferences": float(len(preferences)),
            "data/rl_samples": float(len(rl_samples)),
            "round/promoted": float(promoted),
            "round/lr": peak_lr,
            "round/epochs": float(epochs),
            "round/epochs_trained": float(trained_epochs),
            "round/epochs_kept": float(dev["epoch"] if dev is not None else epochs),
            "time/train_s": train_s,
            "time/round_s": time.monotonic() - started,
        })
        return RoundResult(promoted, metrics, reasons, dev)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
