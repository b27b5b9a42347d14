"""The live trainer: consume ``sft`` and ``preferences``, train in rounds, publish, commit.

Each round, in this order:

1. take exactly the next K usable examples from the topics (or fewer after T seconds);
   records more than ``max_staleness`` policy versions old are dropped or down-weighted,
   duplicates (same ``record_id``) and undecodable records are skipped, all counted;
2. train (``RoundRunner``), probe before/after, gate promotion;
3. write the round folder atomically: weights if promoted, ``offsets.json`` (the next
   offset of every partition), metrics, the records used;
4. publish the weights (Triton load -> Redis pointer), note the version on disk, announce
   it on ``policy-versions`` with the round's metrics;
5. only then commit the offsets to Kafka (group ``cai-trainer``).

On start the newest round folder is the source of truth: its weights are loaded, the
consumer seeks to its offsets and commits them, and a publish or announcement the previous
process did not finish is completed. A SIGKILL anywhere thus loses no example and trains
none twice: records after the saved offsets are read again and trained in the next round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from core.settings import kafka_client_options
from streams import topics as topics_mod
from trainer import checkpoint as ckpt
from trainer.config import TrainerConfig
from trainer.data import BadRecord, PreferenceExample, SFTExample, parse_preference, parse_sft
from trainer.refusal import load_refusal_prompts
from trainer.rounds import Probe, RoundResult, RoundRunner, staleness_weight
from trainer.steps import PolicyLearner, PreferenceLearner

logger = logging.getLogger(__name__)

SEEN_IDS_FILE = "seen_ids.json"
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
    downweighted: int = 0

    @property
    def usable(self) -> int:
        return len(self.sft) + len(self.preferences)

    @property
    def skipped(self) -> int:
        return len(self.dropped) + len(self.duplicates) + len(self.bad) + len(self.probe_added)


class TrainerLoop:
    """Gathers examples, runs rounds and owns the checkpoint/publish/commit order."""

    def __init__(self, config: TrainerConfig, trainer_dir: Path, base_model: str,
                 source: Source, publisher: Publisher, sft_topic: str, preferences_topic: str,
                 keep_checkpoints: int = 3):
        self.config = config
        self.trainer_dir = Path(trainer_dir)
        self.base_model = base_model
        self.source = source
        self.publisher = publisher
        self.sft_topic = sft_topic
        self.preferences_topic = preferences_topic
        self.keep_checkpoints = keep_checkpoints
        self.round_no = 0
        self.version = 1
        self.offsets: dict[str, int] = {}
        self.probe = Probe()
        self.policy_weights = base_model
        self.reward_weights: str | None = None
        self.seen_ids: deque[str] = deque(maxlen=SEEN_IDS_LIMIT)
        self._seen_set: set[str] = set()
        self._backlog: deque[Message] = deque()
        self._pending = _Pending()
        self.runner: RoundRunner | None = None

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
            if state.promoted:
                self._finish_publish(folder, ckpt.load_json(folder, "metrics.json"))
            logger.info("resuming after round %d (%s): policy v%d, offsets %s", state.round,
                        folder.name, self.version, self.offsets)
        self._load_learners()
        positions = self.source.start(self.offsets)
        self.offsets = positions
        if folder is not None:
            # The checkpoint's offsets win over whatever was committed (e.g. a crash between
            # writing the round and committing): make Kafka agree with them.
            self.source.commit(self.offsets)

    def _load_learners(self) -> None:
        policy = PolicyLearner(self._weights_path(self.policy_weights), self.config)
        preference = None
        if self.config.mode == "reward":
            preference = PreferenceLearner(
                self._weights_path(self.reward_weights) if self.reward_weights else self.base_model,
                self.config)
        self.runner = RoundRunner(self.config, policy, preference,
                                  load_refusal_prompts(self.config))

    def _finish_publish(self, folder: Path, metrics: dict) -> None:
        """Publish and announce a promoted round unless already done (idempotent on restart)."""
        info = ckpt.read_published(folder)
        if info is None:
            # A crash after serving took the weights but before published.json was written:
            # reuse that version instead of publishing the same weights again.
            version = self.publisher.find_published(folder)
            if version is not None:
                logger.info("round %s was already serving as policy v%d", folder.name, version)
            else:
                version = self.publisher.publish(folder)
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
        except BadRecord as exc:
            logger.warning("skipping undecodable record at %s: %s", where, exc)
            pending.bad.append({"source": where, "reason": str(exc)})
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
        (pending.sft if isinstance(example, SFTExample) else pending.preferences).append(example)

    def _fill(self, timeout_s: float) -> None:
        """Ingest messages until the round has K usable examples or nothing is waiting."""
        k = self.config.round_every_examples
        if not self._backlog:
            self._backlog.extend(self.source.poll(timeout_s, max_records=max(k, 100)))
        while (self._backlog and self._pending.usable < k
               and self._pending.skipped < SKIP_ONLY_ROUND):
            self._ingest(self._backlog.popleft())

    # --- rounds --------------------------------------------------------------------------
    def run(self, max_rounds: int | None = None, stop: threading.Event | None = None,
            poll_s: float = 1.0) -> int:
        """Run until ``stop`` is set or ``max_rounds`` rounds finished; return rounds run."""
        stop = stop or threading.Event()
        if self.runner is None:
            self.resume()
        done = 0
        last_round = time.monotonic()
        while not stop.is_set() and (max_rounds is None or done < max_rounds):
            self._fill(poll_s)
            due_k = (self._pending.usable >= self.config.round_every_examples
                     or self._pending.skipped >= SKIP_ONLY_ROUND)
            # Skipped records (stale, duplicate, bad) also close a round after T seconds, so
            # their offsets get committed instead of lagging forever.
            due_t = ((self._pending.usable > 0 or self._pending.skipped > 0)
                     and time.monotonic() - last_round >= self.config.round_every_seconds)
            if due_k or due_t:
                self.run_round()
                done += 1
                last_round = time.monotonic()
        return done

    def run_round(self) -> Path:
        pending, self._pending = self._pending, _Pending()
        self.round_no += 1
        version_before = self.version
        if pending.usable:
            result = self.runner.run(self.round_no, pending.sft, pending.preferences, self.probe)
        else:
            result = RoundResult(False, {}, ["no usable examples: only skipped records"])
        metrics = dict(result.metrics)
        metrics.update({
            "staleness/dropped": float(len(pending.dropped)),
            "staleness/downweighted": float(pending.downweighted),
            "data/duplicates": float(len(pending.duplicates)),
            "data/bad_records": float(len(pending.bad)),
            "probe/size_sft": float(len(self.probe.sft)),
            "probe/size_preferences": float(len(self.probe.preferences)),
            "policy/version_before": float(version_before),
        })
        folder_name = ckpt.round_dir(self.trainer_dir, self.round_no).name
        if result.promoted:
            self.policy_weights = folder_name
            if self.config.mode == "reward":
                self.reward_weights = f"{folder_name}/reward_model"

        def save_weights(folder: Path) -> None:
            self.runner.policy.save(folder)
            if self.config.mode == "reward":
                self.runner.preference.save(folder / "reward_model")

        state = ckpt.RoundState(
            round=self.round_no, promoted=result.promoted, policy_weights=self.policy_weights,
            reward_weights=self.reward_weights, policy_version=version_before,
            offsets=dict(self.offsets), created_at=time.time(),
            extra={"reasons": result.reasons})
        examples = {
            "sft": [_describe(e) for e in pending.sft],
            "preferences": [_describe(e) for e in pending.preferences],
            "dropped": pending.dropped, "duplicates": pending.duplicates, "bad": pending.bad,
            "probe_added": pending.probe_added,
        }
        folder = ckpt.write_round(self.trainer_dir, state, metrics, examples, self.probe.to_json(),
                                  self.config, save_weights if result.promoted else None,
                                  extra_files={SEEN_IDS_FILE: list(self.seen_ids)})
        if result.promoted:
            self._finish_publish(folder, metrics)
        self.source.commit(self.offsets)
        self.publisher.record_round(ckpt.round_summary(folder))
        _log_round(self.round_no, result.promoted, self.version, metrics, result.reasons)
        in_use = {str(ckpt.rounds_dir(self.trainer_dir) / self.policy_weights)}
        ckpt.prune(self.trainer_dir, self.keep_checkpoints, in_use)
        return folder

    def close(self) -> None:
        self.source.close()


def _describe(example) -> dict:
    return {"prompt_id": example.prompt_id, "record_id": example.record_id,
            "source": example.source, "weight": example.weight,
            "policy_version": example.policy_version}


def _log_round(round_no: int, promoted: bool, version: int, metrics: dict,
               reasons: list[str]) -> None:
    shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
    logger.info("round %d %s (policy v%d): %s", round_no,
                "promoted" if promoted else "rejected: " + "; ".join(reasons), version, shown)
