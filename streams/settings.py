"""Where the pipeline's topics live: broker address, topic prefix, partition counts (env ``CAI_``).

The broker defaults to the stack's own Kafka (``core.settings.StackSettings().kafka_address``),
so ``cai stack up`` followed by ``cai worker`` needs no configuration. Tests pass values to the
constructor instead of touching the environment.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.settings import StackSettings
from streams.topics import TOPICS


class StreamSettings(BaseSettings):
    """Kafka address, topic naming and partitioning for every pipeline topic."""

    model_config = SettingsConfigDict(env_prefix="CAI_", extra="ignore")

    kafka_bootstrap: str | None = Field(
        None, description="Broker list host:port[,host:port]; default: the local stack's Kafka.",
        json_schema_extra={"flag": "--bootstrap"})
    topic_prefix: str = Field("cai.", description="Prepended to every topic name.")
    partitions: int = Field(
        4,
        description="Partitions of each stage topic; a consumer group splits them between workers.")
    topic_partitions: dict[str, int] = Field(
        default_factory=lambda: {"policy-versions": 1, "dead-letter": 1},
        description="Per-topic overrides, by short name (JSON in the environment).")
    replication_factor: int = Field(1, description="Replicas per partition (1 on a single broker).")
    app_id: str = Field("cai-pipeline", description="Faust application id = Kafka consumer group.")

    @field_validator("partitions", "replication_factor")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1, got {value}; set a positive count")
        return value

    @field_validator("topic_partitions")
    @classmethod
    def _known_topics(cls, value: dict[str, int]) -> dict[str, int]:
        for name, count in value.items():
            if name not in TOPICS:
                raise ValueError(f"unknown topic {name!r}; use one of {', '.join(TOPICS)}")
            if count < 1:
                raise ValueError(f"topic {name!r} needs at least 1 partition, got {count}")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _legal_prefix(cls, value: str) -> str:
        import re

        if value and not re.fullmatch(r"[A-Za-z0-9._-]+", value):
            raise ValueError(f"topic prefix {value!r} may only hold letters, digits, '.', '_' and "
                             "'-'")
        return value

    @property
    def kafka_address(self) -> str:
        return self.kafka_bootstrap or StackSettings().kafka_address
