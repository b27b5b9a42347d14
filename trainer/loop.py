"""The live trainer: consume ``sft`` and ``preferences``, train in rounds, publish, commit.

When a round starts (training and serving share the CPU, so a round waits for the pipeline):

* as soon as the pipeline has drained (no stage has work waiting and every sft/preferences
  record has been read) and at least ``round_min_examples`` usable examples are in;
* at ``round_every_examples`` (K) usable examples, drained or not;
* ``round_every_seconds`` (T) after the round's first example arrived, drained or not.

Each round, in this order:

1. take the usable examples gathered so far, plus the examples a rejected previous round
   carried over (at most ``carry_limit`` times each); records more than ``max_staleness``
   policy versions old are dropped or down-weighted, duplicates (same ``record_id``),
   undecodable records and targets the pipeline dropped are skipped, all counted;
2. train (``RoundRunner``), gate promotion on the dev split (trainer/gate.py);
3. write the round folder atomically: weights if promoted, ``offsets.json`` (the next
   offset of every partition), metrics, the records used;
4. publish the weights (Triton load -> Redis pointer), note the version on disk, announce
   it on ``policy-versions`` with the round's metrics;
5. only then commit the offsets to Kafka (group ``cai-trainer``).

On start the newest round folder is the source of truth: its weights, the gate's figures and a
rejected round's carried examples are loaded, the consumer seeks to its offsets and commits
them, and a publish or announcement the previous process did not finish is completed. A SIGKILL
anywhere thus loses no example and trains none twice: records after the saved offsets are read
again and trained in the next round.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

from core.settings import kafka_client_options
from streams import topics as topics_mod
from trainer import checkpoint as ckpt
from trainer import metrics as trainer_metrics
from trainer.config import TrainerConfig
from trainer.data import (
    BadRecord,
    DroppedTarget,
    PreferenceExample,
    RLSample,
    SFTExample,
    parse_preference,
    parse_sft,
)
from trainer.gate import load_dev_set
from trainer.rl import (
    Rollouts,
    informative,
    round_prompts,
    sample_metrics,
    sample_records,
    split_pairs,
)
from trainer.rounds import Probe, RoundResult, RoundRunner, staleness_weight
from trainer.steps import PolicyLearner, PreferenceLearner

logger = logging.getLogger(__name__)

SEEN_IDS_FILE = "seen_ids.json"
CARRIED_FILE = "carried.json"  # a rejected round's examples, trained again in the next round
REPLAY_FILE = "replay.json"  # examples of promoted rounds, trained again in later rounds
PM_HELDOUT_FILE = "pm_heldout.json"  # pairs the preference model never trains on (mode 'rloo')
PM_HELDOUT_LIMIT = 400
REWARD_MODELS_DIR = "reward-models"  # preference models published as the reward role
REWARD_SERVING_FILE = "serving.json"  # in REWARD_MODELS_DIR: which of them serves, as what
DEV_ANSWERS_FILE = "dev_answers.json"  # the candidate's gate answers, with their verdicts
SEEN_IDS_LIMIT = 100_000  # record ids remembered for de-duplication
# A round with nothing to train still checkpoints and commits once this many records were
# skipped (stale, duplicate, undecodable), so a stream of unusable data keeps moving.
SKIP_ONLY_ROUND = 1000


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    value: bytes

    @property
    def key(self) -> str:
        return f"{self.topic}/{self.partition}"


class Source(Protocol):
    def start(self, offsets: dict[str, int]) -> dict[str, int]: ...
    def poll(self, timeout_s: float, max_records: int) -> list[Message]: ...
    def commit(self, offsets: dict[str, int]) -> None: ...
    def close(self) -> None: ...


class Publisher(Protocol):
    def publish(self, checkpoint_dir: Path) -> int: ...
    def announce(self, version: int, checkpoint_dir: Path, metrics: dict) -> None: ...
    def current_version(self) -> int: ...
    def find_published(self, checkpoint_dir: Path) -> int | None: ...
    def record_round(self, summary: dict) -> None: ...
    # Mode 'rloo' only: serve a preference-model folder as the next ``reward`` version, and send
    # a round's samples to the ``rl-samples`` topic.
    def publish_reward(self, folder: Path) -> int: ...
    def send_samples(self, records: list) -> None: ...


class Pipeline(Protocol):
    def drained(self) -> bool: ...


class KafkaPipeline:
    """Whether the stages have work waiting: consumer lag of the worker group on the stage
    topics (a partition the group never committed counts from its beginning)."""

    def __init__(self, bootstrap: str, stage_topics: list[str], group: str):
        self.bootstrap, self.stage_topics, self.group = bootstrap, stage_topics, group
        self._reader = None

    def drained(self) -> bool:
        from streams.topic_stats import TopicReader

        try:
            if self._reader is None:
                self._reader = TopicReader(self.bootstrap)
            return all(self._reader.backlog(topic, self.group) == 0
                       for topic in self.stage_topics)
        except Exception as exc:  # noqa: BLE001 - a failed check only delays a round
            logger.warning("cannot read the pipeline's lag (%s); not treating it as drained", exc)
            self._reader = None
            return False


class KafkaSource:
    """All partitions of the given topics, assigned manually; offsets committed by hand.

    Manual assignment (no group membership) means a long training round never triggers a
    rebalance; the group id is only where offsets are committed.
    """

    def __init__(self, bootstrap: str, topics: list[str], group_id: str = topics_mod.TRAINER_GROUP,
                 wait_for_topics_s: float = 300.0):
        self.bootstrap = bootstrap
        self.topics = topics
        self.group_id = group_id
        self.wait_for_topics_s = wait_for_topics_s
        self._consumer = None

    def _partitions(self):
        from kafka import TopicPartition

        deadline = time.monotonic() + self.wait_for_topics_s
        while True:
            found = {t: self._consumer.partitions_for_topic(t) for t in self.topics}
            missing = [t for t, parts in found.items() if not parts]
            if not missing:
                return [TopicPartition(t, p) for t in self.topics for p in sorted(found[t])]
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics {missing} do not exist on {self.bootstrap}; create "
                                   "them with `cai topics` (streams.admin.ensure_topics)")
            logger.info("waiting for topics %s to exist", missing)
            time.sleep(2.0)

    def start(self, offsets: dict[str, int]) -> dict[str, int]:
        """Assign every partition; seek to ``offsets`` where given, else committed/earliest."""
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id=topics_mod.TRAINER_GROUP,
            **kafka_client_options())
        partitions = self._partitions()
        self._consumer.assign(partitions)
        for tp in partitions:
            key = f"{tp.topic}/{tp.partition}"
            if key in offsets:
                self._consumer.seek(tp, offsets[key])
        return {f"{tp.topic}/{tp.partition}": self._consumer.position(tp) for tp in partitions}

    def poll(self, timeout_s: float, max_records: int) -> list[Message]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out = [Message(r.topic, r.partition, r.offset, r.value)
               for records in batches.values() for r in records]
        return out

    def commit(self, offsets: dict[str, int]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        self._consumer.commit({
            TopicPartition(key.rsplit("/", 1)[0], int(key.rsplit("/", 1)[1])):
                OffsetAndMetadata(offset, "", -1)
            for key, offset in offsets.items()})

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)


@dataclass
class _Pending:
    """Examples and bookkeeping for the round being gathered."""

    sft: list[SFTExample] = field(default_factory=list)
    preferences: list[PreferenceExample] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    bad: list[dict] = field(default_factory=list)
    probe_added: list[str] = field(default_factory=list)
    targets_dropped: list[dict] = field(default_factory=list)
    # Undecodable records' dead letters, sent before the round's offsets are committed.
    dead_letters: list = field(default_factory=list)
    carried: int = 0  # examples carried over from a rejected round
    downweighted: int = 0
    first_at: float | None = None  # clock time of the first usable example
    clock: object = time.monotonic

    @property
    def usable(self) -> int:
        return len(self.sft) + len(self.preferences)

    @property
    def skipped(self) -> int:
        return (len(self.dropped) + len(self.duplicates) + len(self.bad) + len(self.probe_added)
                + len(self.targets_dropped))

    @property
    def new(self) -> int:
        """Usable examples that arrived for this round (not carried over)."""
        return self.usable - self.carried

    def add(self, example, carried: bool = False) -> None:
        if carried:
            self.carried += 1
        elif self.first_at is None:
            self.first_at = self.clock()
        (self.sft if isinstance(example, SFTExample) else self.preferences).append(example)


class TrainerLoop:
    """Gathers examples, runs rounds and owns the checkpoint/publish/commit order."""

    def __init__(self, config: TrainerConfig, trainer_dir: Path, base_model: str,
                 source: Source, publisher: Publisher, sft_topic: str, preferences_topic: str,
                 keep_checkpoints: int = 3, pipeline: Pipeline | None = None,
                 drain_confirm_s: float = 2.0, clock=time.monotonic,
                 rollouts: Rollouts | None = None):
        self.config = config
        self.trainer_dir = Path(trainer_dir)
        self.base_model = base_model
        self.source = source
        self.publisher = publisher
        self.sft_topic = sft_topic
        self.preferences_topic = preferences_topic
        self.keep_checkpoints = keep_checkpoints
        self.pipeline = pipeline
        self.drain_confirm_s = drain_confirm_s
        self.clock = clock
        self._drained_since: float | None = None
        self._caught_up = False  # the last poll returned nothing new
        self._skips_since = clock()
        self.round_no = 0
        self.version = 1
        self.offsets: dict[str, int] = {}
        self.probe = Probe()
        self.policy_weights = base_model
        self.reward_weights: str | None = None
        self.seen_ids: deque[str] = deque(maxlen=SEEN_IDS_LIMIT)
        self._seen_set: set[str] = set()
        self._backlog: deque[Message] = deque()
        self._pending = _Pending(clock=clock)
        self._replay: list = []  # examples of promoted rounds (replay_helpful, replay_harmful)
        self._serving_figures: dict | None = None  # the gate's dev figures, kept across rounds
        self._base_figures: dict | None = None
        self.runner: RoundRunner | None = None
        if config.mode == "rloo" and rollouts is None:
            raise ValueError("mode='rloo' samples from the serving policy: pass rollouts=...")
        self.rollouts = rollouts
        self.reward_version = 1  # the reward role's version that serves (mode 'rloo')
        self._pm_held_out: list[PreferenceExample] = []
        self._stop = threading.Event()  # set by ``run``'s stop: ends a wait on an outage

    # --- start / resume ------------------------------------------------------------------
    def _weights_path(self, pointer: str) -> str:
        candidate = ckpt.rounds_dir(self.trainer_dir) / pointer
        return str(candidate) if pointer.startswith(ckpt.PREFIX) and candidate.exists() else pointer

    def resume(self) -> None:
        """Load the newest round (or the base model), finish its publish, seek and commit."""
        folder = ckpt.latest_round(self.trainer_dir)
        if folder is None:
            self.version = self.publisher.current_version()
            logger.info("no checkpoint in %s: starting from %s, serving policy v%d",
                        self.trainer_dir, self.base_model, self.version)
        else:
            state = ckpt.load_state(folder)
            self.round_no = state.round
            self.offsets = dict(state.offsets)
            self.policy_weights = state.policy_weights
            self.reward_weights = state.reward_weights
            self.probe = Probe.from_json(ckpt.load_json(folder, "probe.json"))
            seen_file = folder / SEEN_IDS_FILE
            if seen_file.exists():
                for record_id in ckpt.load_json(folder, SEEN_IDS_FILE):
                    self._remember(record_id)
            self.version = state.policy_version
            gate_state = state.extra.get("gate") or {}
            self._serving_figures = gate_state.get("serving")
            self._base_figures = gate_state.get("base")
            self.reward_version = state.extra.get("reward_version", 1)
            self._adopt_serving_reward()
            if (folder / PM_HELDOUT_FILE).exists():
                self._pm_held_out = [e for e in _examples_from_json(
                    ckpt.load_json(folder, PM_HELDOUT_FILE))
                    if isinstance(e, PreferenceExample)]
            if (folder / REPLAY_FILE).exists():
                self._replay = _examples_from_json(ckpt.load_json(folder, REPLAY_FILE))
            if (folder / CARRIED_FILE).exists():
                for example in _examples_from_json(ckpt.load_json(folder, CARRIED_FILE)):
                    self._pending.add(example, carried=True)
            if state.promoted:
                self._finish_publish(folder, ckpt.load_json(folder, "metrics.json"))
                if ckpt.is_quarantined(folder):
                    self.policy_weights = ckpt.load_state(folder).policy_weights
                    self._serving_figures = gate_state.get("before") or self._serving_figures
            logger.info("resuming after round %d (%s): policy v%d, offsets %s", state.round,
                        folder.name, self.version, self.offsets)
        trainer_metrics.SERVING_VERSION.set(self.version)
        self._load_learners()
        positions = self.source.start(self.offsets)
        self.offsets = positions
        if folder is not None:
            # The checkpoint's offsets win over whatever was committed (e.g. a crash between
            # writing the round and committing): make Kafka agree with them.
            self.source.commit(self.offsets)
            ckpt.mark_committed(folder)

    def _adopt_serving_reward(self) -> None:
        """Take the reward model that serves from ``reward-models/serving.json``: it is written
        as soon as one is published, so it is newer than a round folder when the process died
        in between."""
        path = self.trainer_dir / REWARD_MODELS_DIR / REWARD_SERVING_FILE
        if not path.exists():
            return
        serving = ckpt.load_json(path.parent, path.name)
        folder = path.parent / serving["folder"]
        if serving["version"] > self.reward_version and folder.is_dir():
            logger.info("reward v%d (%s) was published after the last round folder; going on "
                        "with it", serving["version"], folder.name)
            self.reward_version, self.reward_weights = serving["version"], str(folder)

    def _preference_learner(self) -> PreferenceLearner:
        """The preference model that serves (or a new one on the base model)."""
        return PreferenceLearner(
            self._weights_path(self.reward_weights) if self.reward_weights else self.base_model,
            self.config)

    def _load_learners(self) -> None:
        policy = PolicyLearner(self._weights_path(self.policy_weights), self.config)
        preference = (self._preference_learner() if self.config.mode in ("reward", "rloo")
                      else None)
        self.runner = RoundRunner(self.config, policy, preference, load_dev_set(self.config),
                                  self._serving_figures, self._base_figures)

    def _publish_once(self, folder: Path) -> int:
        # A crash after serving took the weights but before published.json was written:
        # reuse that version instead of publishing the same weights again.
        version = self.publisher.find_published(folder)
        if version is not None:
            logger.info("round %s was already serving as policy v%d", folder.name, version)
            return version
        return self.publisher.publish(folder)

    def _publish(self, folder: Path) -> int | None:
        """Publish ``folder``: an outage (``retryable`` error) is waited out with backoff; a
        load failure counts against the round (in the folder, so restarts count too) and is
        raised (the process restarts and tries again); at ``publish_attempts`` failures the
        round is quarantined instead (None), so a round Triton never loads cannot make a
        crash loop."""
        try:
            return self._with_retries(f"publishing {folder.name}",
                                      lambda: self._publish_once(folder))
        except Exception as exc:
            if _is_outage(exc):  # the stop came while an outage was waited out
                raise
            failures = ckpt.count_publish_failure(folder, str(exc))
            logger.error("publishing %s failed (%d of %d): %s", folder.name, failures,
                         self.config.publish_attempts, exc)
            if failures >= self.config.publish_attempts:
                self._quarantine(folder, str(exc))
                return None
            raise

    def _quarantine(self, folder: Path, reason: str) -> None:
        """Treat a round Triton never loads as rejected: the previous weights go on."""
        previous = ckpt.quarantine(folder, f"quarantined: Triton failed to load it "
                                           f"{self.config.publish_attempts} times ({reason[:300]})",
                                   self.base_model)
        logger.error("round %s quarantined; training goes on from %s", folder.name, previous)
        self.policy_weights = previous
        state = ckpt.load_state(folder)
        gate = state.extra.get("gate") or {}
        self._serving_figures = gate.get("before") or self._serving_figures
        if self.runner is not None:
            self._load_learners()

    def _finish_publish(self, folder: Path, metrics: dict) -> None:
        """Publish and announce a promoted round unless already done (idempotent on restart)."""
        if ckpt.is_quarantined(folder):
            return
        info = ckpt.read_published(folder)
        if info is None:
            version = self._publish(folder)
            if version is None:
                return
            ckpt.write_published(folder, version, announced=False)
            info = {"version": version, "announced": False}
            logger.info("round %s: published as policy v%d", folder.name, version)
        version = info["version"]
        if not info["announced"]:
            self.publisher.announce(version, folder, {**metrics, "policy/version": float(version)})
            ckpt.write_published(folder, version, announced=True)
        self.version = version

    # --- gathering -----------------------------------------------------------------------
    def _remember(self, record_id: str) -> None:
        if len(self.seen_ids) == self.seen_ids.maxlen:
            self._seen_set.discard(self.seen_ids[0])
        self.seen_ids.append(record_id)
        self._seen_set.add(record_id)

    def _ingest(self, message: Message) -> None:
        """Advance the offsets past ``message`` and file it as probe, example or skipped."""
        self.offsets[message.key] = message.offset + 1
        where = f"{message.key}/{message.offset}"
        pending = self._pending
        try:
            if message.topic == self.sft_topic:
                example = parse_sft(message.value, where)
            elif message.topic == self.preferences_topic:
                example = parse_preference(message.value, where)
            else:
                return
        except DroppedTarget as exc:
            pending.targets_dropped.append({"source": where, "reason": str(exc)})
            return
        except Exception as exc:  # noqa: BLE001 - BadRecord, or anything a hostile record raises
            reason = str(exc) if isinstance(exc, BadRecord) else f"{type(exc).__name__}: {exc}"
            logger.warning("skipping undecodable record at %s: %s", where, reason[:300])
            pending.bad.append({"source": where, "reason": reason[:1000]})
            pending.dead_letters.append(_dead_letter(message, reason))
            return
        if example.record_id:
            if example.record_id in self._seen_set:
                pending.duplicates.append(where)
                return
            self._remember(example.record_id)
        if self.probe.wants(example, self.config.probe_size):
            self.probe.add(example)
            pending.probe_added.append(example.prompt_id)
            return
        weight = staleness_weight(example.policy_version, self.version, self.config)
        if weight == 0.0:
            pending.dropped.append({"prompt_id": example.prompt_id, "source": where,
                                    "policy_version": example.policy_version})
            return
        if weight < 1.0:
            pending.downweighted += 1
        example.weight = weight
        pending.add(example)

    def _fill(self, timeout_s: float) -> None:
        """Ingest messages until the round has K new usable examples or nothing is waiting
        (examples carried over from a rejected round do not count: they alone start no round,
        so counting them could stop the reading for good)."""
        k = self.config.round_every_examples
        if not self._backlog:
            polled = self.source.poll(timeout_s, max_records=max(k, 100))
            self._caught_up = not polled
            self._backlog.extend(polled)
        while (self._backlog and self._pending.new < k
               and self._pending.skipped < SKIP_ONLY_ROUND):
            self._ingest(self._backlog.popleft())

    def gather(self) -> None:
        """Ingest every record the source holds now, however many (an in-process pipeline
        that has drained hands over its whole output at once)."""
        while True:
            if not self._backlog:
                polled = self.source.poll(0.0, max_records=1000)
                if not polled:
                    self._caught_up = True
                    return
                self._backlog.extend(polled)
            while self._backlog:
                self._ingest(self._backlog.popleft())

    # --- rounds --------------------------------------------------------------------------
    def drained(self) -> bool:
        """The pipeline has had no work waiting, and this trainer nothing unread, for
        ``drain_confirm_s`` (two looks, so a record between stages is not missed)."""
        now = self.clock()
        idle = (self._caught_up and not self._backlog and self.pipeline is not None
                and self.pipeline.drained())
        if not idle:
            self._drained_since = None
            return False
        if self._drained_since is None:
            self._drained_since = now
        return now - self._drained_since >= self.drain_confirm_s

    def round_due(self) -> str | None:
        """Why a round should start now ("examples", "drained", "timer", "skipped"), or None."""
        pending, cfg = self._pending, self.config
        if pending.skipped >= SKIP_ONLY_ROUND:
            return "skipped"
        if pending.new:  # carried examples alone never start a round
            if pending.new >= cfg.round_every_examples:
                return "examples"
            if (cfg.wait_for_drain and pending.usable >= cfg.round_min_examples
                    and self.drained()):
                return "drained"
            if self.clock() - pending.first_at >= cfg.round_every_seconds:
                return "timer"
        # Skipped records alone (stale, duplicate, bad) also close a round after T seconds, so
        # their offsets get committed instead of lagging forever.
        elif (pending.skipped > 0
              and self.clock() - self._skips_since >= cfg.round_every_seconds):
            return "skipped"
        return None

    def run(self, max_rounds: int | None = None, stop: threading.Event | None = None,
            poll_s: float = 1.0) -> int:
        """Run until ``stop`` is set or ``max_rounds`` rounds finished; return rounds run."""
        stop = stop or threading.Event()
        self._stop = stop
        if self.runner is None:
            self.resume()
        done = 0
        while not stop.is_set() and (max_rounds is None or done < max_rounds):
            self._fill(poll_s)
            why = self.round_due()
            if why:
                logger.info("round %d starts (%s): %d examples (%d carried over), %d skipped",
                            self.round_no + 1, why, self._pending.usable, self._pending.carried,
                            self._pending.skipped)
                self.run_round()
                done += 1
                self._skips_since = self.clock()
        return done

    def run_round(self) -> Path:
        started = time.monotonic()
        pending, self._pending = self._pending, _Pending(clock=self.clock)
        self.round_no += 1
        version_before = self.version
        replay = self._replay
        rl_metrics: dict[str, float] = {}
        if pending.usable:
            replay_sft, replay_preferences = _by_type(replay)
            rl_samples = None
            if self.config.mode == "rloo":
                rl_samples, rl_metrics = self._rl_samples(pending, replay_preferences)
            result = self.runner.run(self.round_no, pending.sft + replay_sft,
                                     pending.preferences + replay_preferences, self.probe,
                                     promoted_versions=version_before - 1, rl_samples=rl_samples)
        else:
            result = RoundResult(False, {}, ["no usable examples: only skipped records"])
        metrics = {**rl_metrics, **result.metrics}
        metrics.update({
            "data/carried_in": float(pending.carried),
            "data/replayed": float(len(replay) if pending.usable else 0),
            "data/targets_dropped": float(len(pending.targets_dropped)),
            "staleness/dropped": float(len(pending.dropped)),
            "staleness/downweighted": float(pending.downweighted),
            "data/duplicates": float(len(pending.duplicates)),
            "data/bad_records": float(len(pending.bad)),
            "probe/size_sft": float(len(self.probe.sft)),
            "probe/size_preferences": float(len(self.probe.preferences)),
            "policy/version_before": float(version_before),
        })
        folder_name = ckpt.round_dir(self.trainer_dir, self.round_no).name
        previous_weights = self.policy_weights
        if result.promoted:
            self.policy_weights = folder_name
            if self.config.mode == "reward":
                self.reward_weights = f"{folder_name}/reward_model"

        def save_weights(folder: Path) -> None:
            self.runner.policy.save(folder)
            if self.config.mode == "reward":
                self.runner.preference.save(folder / "reward_model")

        if result.gate is not None:
            self._base_figures = result.gate["base"]
            self._serving_figures = result.gate["after" if result.promoted else "before"]
        carried = [] if result.promoted else self._carry(pending)
        if result.promoted:
            self._replay = self._replayed(pending)
        state = ckpt.RoundState(
            round=self.round_no, promoted=result.promoted, policy_weights=self.policy_weights,
            reward_weights=self.reward_weights, policy_version=version_before,
            offsets=dict(self.offsets), created_at=time.time(),
            extra={"reasons": result.reasons, "previous_weights": previous_weights,
                   "reward_version": self.reward_version, "gate": {
                "before": result.gate["before"] if result.gate else None,
                "after": result.gate["after"] if result.gate else None,
                "serving": self._serving_figures, "base": self._base_figures}})
        examples = {
            "sft": [_describe(e) for e in pending.sft],
            "preferences": [_describe(e) for e in pending.preferences],
            "dropped": pending.dropped, "duplicates": pending.duplicates, "bad": pending.bad,
            "probe_added": pending.probe_added, "targets_dropped": pending.targets_dropped,
        }
        extra_files = {SEEN_IDS_FILE: list(self.seen_ids)}
        if result.gate is not None:
            extra_files[DEV_ANSWERS_FILE] = result.gate["answers"]
        if self._replay:
            extra_files[REPLAY_FILE] = _examples_json(self._replay)
        if carried:
            extra_files[CARRIED_FILE] = _examples_json(carried)
        if self._pm_held_out:
            extra_files[PM_HELDOUT_FILE] = _examples_json(self._pm_held_out)
        folder = ckpt.write_round(self.trainer_dir, state, metrics, examples, self.probe.to_json(),
                                  self.config, save_weights if result.promoted else None,
                                  extra_files=extra_files)
        if result.promoted:
            self._finish_publish(folder, metrics)
        if pending.dead_letters and hasattr(self.publisher, "dead_letter"):
            # Before the commit: a crash in between repeats them (same source position), never
            # loses them; `cai dead-letter` shows one per position.
            self.publisher.dead_letter(pending.dead_letters)
        self.source.commit(self.offsets)
        ckpt.mark_committed(folder)
        summary = ckpt.round_summary(folder)
        self.publisher.record_round(summary)
        trainer_metrics.observe_round(summary, metrics, time.monotonic() - started, time.time(),
                                      probe_records=len(pending.probe_added))
        trainer_metrics.SERVING_VERSION.set(self.version)
        _log_round(self.round_no, result.promoted, self.version, metrics, result.reasons)
        for example in carried:
            self._pending.add(example, carried=True)
        in_use = {str(ckpt.rounds_dir(self.trainer_dir) / self.policy_weights)}
        ckpt.prune(self.trainer_dir, self.keep_checkpoints, in_use)
        return folder

    # --- mode 'rloo' ---------------------------------------------------------------------
    def _rl_samples(self, pending: _Pending, replayed_pairs: list[PreferenceExample]
                    ) -> tuple[list[RLSample], dict[str, float]]:
        """The preference model learns from the round's pairs and, kept, serves as the next
        reward version; then the serving policy's samples of the round's prompts are scored by
        it, sent to the rl-samples topic, and returned (those that carry an advantage). A
        serving role that fails (after retries of an outage) costs the round its RL part, not
        the round: it trains on its SFT revisions alone."""
        cfg = self.config
        train, held = split_pairs(pending.preferences + replayed_pairs, cfg.pm_holdout)
        known = {_pair_text(e) for e in self._pm_held_out}
        fresh = [e for e in held if _pair_text(e) not in known]
        self._pm_held_out = (fresh + self._pm_held_out)[:PM_HELDOUT_LIMIT]
        kept, metrics = self.runner.train_reward(self.round_no, train, self._pm_held_out)
        if kept:
            folder = self._save_reward_model()
            try:
                version = self._with_retries("publishing the preference model",
                                             lambda: self.publisher.publish_reward(folder),
                                             attempts=6)
            except Exception as exc:  # noqa: BLE001 - Triton refused it: the old PM serves on
                logger.error("round %d: the preference model was not published (%s); reward "
                             "v%d serves on", self.round_no, exc, self.reward_version)
                self.runner.preference = self._preference_learner()  # back to what serves
            else:
                self.reward_version, self.reward_weights = version, str(folder)
                # At once, not with the round folder: a crash before that must not leave the
                # trainer's idea of the serving reward model behind Triton's.
                ckpt.write_json_atomic(folder.parent / REWARD_SERVING_FILE,
                                       {"version": version, "folder": folder.name})
                logger.info("round %d: preference model serving as reward v%d", self.round_no,
                            version)
        metrics["reward/version"] = float(self.reward_version)
        if self.reward_version <= 1:
            logger.info("round %d: no trained preference model serves yet; no RL samples this "
                        "round (SFT only)", self.round_no)
            return [], metrics
        prompts = round_prompts(pending.sft + pending.preferences)
        logger.info("round %d: sampling %d answers to each of %d prompts from policy v%d",
                    self.round_no, cfg.rl_samples, len(prompts), self.version)
        try:
            samples = self._with_retries("sampling and scoring", lambda: self.rollouts.collect(
                prompts, cfg.rl_samples, cfg.rl_temperature, cfg.rl_max_new_tokens,
                cfg.seed + self.round_no), attempts=6)
        except Exception as exc:  # noqa: BLE001
            logger.error("round %d: no RL samples (%s); the round trains on SFT alone",
                         self.round_no, exc)
            return [], metrics
        stale = [s for s in samples if s.policy_version != self.version]
        if stale:  # e.g. a rollback between rounds: the ratio's reference would be wrong
            logger.warning("round %d: %d samples came from another policy version than v%d; "
                           "left out", self.round_no, len(stale), self.version)
            samples = [s for s in samples if s.policy_version == self.version]
        try:
            self.publisher.send_samples(sample_records(samples, self.round_no))
        except Exception as exc:  # noqa: BLE001 - the topic is for watching; training goes on
            logger.warning("round %d: RL samples not sent to the topic: %s", self.round_no, exc)
        metrics.update(sample_metrics(samples))
        used = informative(samples)
        metrics["rl/samples_used"] = float(len(used))
        return used, metrics

    def _with_retries(self, what: str, call, attempts: int | None = None):
        """``call()``, with an outage (``_is_outage``) waited out with backoff (2 s doubling to
        60 s), ``attempts`` times in all or until the stop; other errors are raised at once."""
        attempt = 0
        while True:
            try:
                return call()
            except Exception as exc:
                attempt += 1
                if not _is_outage(exc) or attempt == attempts:
                    raise
                delay = min(60.0, 2.0 * 2**min(attempt - 1, 5))
                logger.warning("%s: a service is unreachable (%s); retry %d in %.0fs", what, exc,
                               attempt, delay)
                if self._stop.wait(delay):
                    raise

    def _save_reward_model(self) -> Path:
        """The preference model's weights in ``reward-models/round-N`` (written whole, then
        renamed into place: Triton's copy may share the files' inodes). Older ones are pruned,
        except the one that serves."""
        parent = self.trainer_dir / REWARD_MODELS_DIR
        target = parent / f"{ckpt.PREFIX}{self.round_no:06d}"
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        self.runner.preference.save(partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        serving = Path(self.reward_weights).name if self.reward_weights else None
        saved = sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.endswith(
            ".partial") and p.name not in (target.name, serving))
        for old in saved[:-1]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def _replayed(self, pending: _Pending) -> list:
        """The replay pool after a promoted round: per kind, the round's examples first, then
        the pool's, at most ``replay_helpful`` helpful and ``replay_harmful`` red-team ones. A
        replayed example is never new (``carries`` >= 1), so it does not lengthen an epoch
        (``rounds.epoch_budget``)."""
        fresh = [replace(e, carries=max(1, e.carries)) for e in pending.sft + pending.preferences]
        pool = []
        for helpful, limit in ((True, self.config.replay_helpful),
                               (False, self.config.replay_harmful)):
            pool += [e for e in fresh + self._replay
                     if (e.kind == "helpful") == helpful][:max(0, limit)]
        return pool

    def _carry(self, pending: _Pending) -> list:
        """The examples of a rejected round that go on to the next one (each at most
        ``carry_limit`` times)."""
        examples = pending.sft + pending.preferences
        carried = [e for e in examples if e.carries < self.config.carry_limit]
        for example in carried:
            example.carries += 1
        if examples:
            logger.info("round %d rejected: %d of its %d examples carry over to round %d%s",
                        self.round_no, len(carried), len(examples), self.round_no + 1,
                        f" ({len(examples) - len(carried)} carried {self.config.carry_limit} "
                        "time(s) already are dropped)" if len(carried) < len(examples) else "")
        return carried

    def close(self) -> None:
        self.source.close()


def _is_outage(exc: Exception) -> bool:
    """A service that could not be reached (a ``retryable`` error, a refused connection), as
    opposed to one that answered with an error."""
    return getattr(exc, "retryable", False) or isinstance(exc, OSError)


def _dead_letter(message: Message, reason: str):
    """The dead letter of a record the trainer cannot use (stage ``trainer``)."""
    from streams.records import DeadLetterRecord, now

    limit = 65536
    payload = bytes(message.value or b"")
    return DeadLetterRecord(
        stage="trainer", reason=reason[:4000].encode("utf-8", "replace").decode(),
        topic=message.topic, partition=message.partition, offset=message.offset,
        key=message.key, payload=payload[:limit].decode("utf-8", "replace"),
        payload_bytes=len(payload), truncated=len(payload) > limit, created_at=now())


def _by_type(examples: list) -> tuple[list[SFTExample], list[PreferenceExample]]:
    return ([e for e in examples if isinstance(e, SFTExample)],
            [e for e in examples if isinstance(e, PreferenceExample)])


def _examples_json(examples: list) -> dict:
    """Examples as a checkpoint file holds them (carried.json, replay.json)."""
    sft, preferences = _by_type(examples)
    return {"sft": [asdict(e) for e in sft], "preferences": [asdict(e) for e in preferences]}


def _examples_from_json(data: dict) -> list:
    """The examples of ``_examples_json``, SFT first."""
    return ([SFTExample(**e) for e in data.get("sft", [])]
            + [PreferenceExample(**e) for e in data.get("preferences", [])])


def _pair_text(example: PreferenceExample) -> tuple[str, str, str]:
    return (example.prompt, example.chosen, example.rejected)


def _describe(example) -> dict:
    return {"prompt_id": example.prompt_id, "record_id": example.record_id,
            "source": example.source, "weight": example.weight,
            "policy_version": example.policy_version}


def _log_round(round_no: int, promoted: bool, version: int, metrics: dict,
               reasons: list[str]) -> None:
    shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
    logger.info("round %d %s (policy v%d): %s", round_no,
                "promoted" if promoted else "rejected: " + "; ".join(reasons), version, shown)
