"""Topic names and partition counts: the one place that says which topics exist.

Short names are fixed by the contract; the full name is ``prefix + short name``
(default ``cai.prompts`` ...). ``partitions_for`` gives each topic's partition count.
``rl-samples`` is written by the trainer in online RL (RLOO) rounds: each sampled answer with its
reward, for the monitor and the dashboard; no stage reads it.
The names are the lower module: ``streams.settings`` validates its per-topic overrides against
``TOPICS``, and the functions here take those settings as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: settings import this module, not the other way round
    from streams.settings import StreamSettings

PROMPTS = "prompts"
CRITIQUE = "critique"
REVISE = "revise"
COMPARE = "compare"
SFT = "sft"
PREFERENCES = "preferences"
POLICY_VERSIONS = "policy-versions"
DEAD_LETTER = "dead-letter"
RL_SAMPLES = "rl-samples"

# The consumer group where the trainer commits its sft/preferences offsets (monitor reads its lag).
TRAINER_GROUP = "cai-trainer"

TOPICS = (PROMPTS, CRITIQUE, REVISE, COMPARE, SFT, PREFERENCES, POLICY_VERSIONS, DEAD_LETTER,
          RL_SAMPLES)


@dataclass(frozen=True)
class TopicSpec:
    short: str
    name: str
    partitions: int
    replication_factor: int


def topic_name(short: str, settings: StreamSettings) -> str:
    if short not in TOPICS:
        raise ValueError(f"unknown topic {short!r}; use one of {', '.join(TOPICS)}")
    return settings.topic_prefix + short


def partitions_for(short: str, settings: StreamSettings) -> int:
    return settings.topic_partitions.get(short, settings.partitions)


def all_topics(settings: StreamSettings) -> list[TopicSpec]:
    return [
        TopicSpec(short, topic_name(short, settings), partitions_for(short, settings),
                  settings.replication_factor)
        for short in TOPICS
    ]
