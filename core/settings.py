"""Settings every package shares (env prefix ``CAI_``): where the stack lives and how to reach
it (``StackSettings``), and which model serves each of the four roles (``ModelSettings``,
``ROLES``).

Every address can point at an external deployment (for example docker-compose):
set ``CAI_KAFKA_BOOTSTRAP``, ``CAI_REDIS_URL`` or ``CAI_TRITON_HTTP_URL`` /
``CAI_TRITON_GRPC_URL`` and ``cai stack up`` leaves that service alone.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KAFKA_VERSION = "3.9.1"
ROLES = ("policy", "critic", "reviser", "judge")


class StackSettings(BaseSettings):
    """Ports, folders and external addresses for Kafka, Redis and Triton."""

    model_config = SettingsConfigDict(env_prefix="CAI_", extra="ignore")

    state_dir: Path = Field(Path(".cai"), description="Data, logs and PIDs of local services.")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "cai",
        description="Prepared artefacts outside git: Kafka jars, Triton backend, model weights.",
    )
    host: str = "127.0.0.1"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    redis_port: int = 16379
    triton_http_port: int = 18000
    triton_grpc_port: int = 18001
    triton_metrics_port: int = 18002
    kafka_heap: str = "512m"
    start_timeout_s: float = 90.0

    kafka_bootstrap: str | None = Field(None, description="Use this broker instead of a local one.")
    redis_url: str | None = Field(None, description="Use this Redis instead of a local one.")
    triton_http_url: str | None = Field(None, description="Use this Triton instead of a local one.")
    triton_grpc_url: str | None = None

    @field_validator(
        "kafka_port", "kafka_controller_port", "redis_port",
        "triton_http_port", "triton_grpc_port", "triton_metrics_port",
    )
    @classmethod
    def _port_in_range(cls, port: int) -> int:
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is outside 1-65535; pick a free port")
        return port

    # Resolved addresses: external if given, else the local service's.
    @property
    def kafka_address(self) -> str:
        return self.kafka_bootstrap or f"{self.host}:{self.kafka_port}"

    @property
    def redis_address(self) -> str:
        return self.redis_url or f"redis://{self.host}:{self.redis_port}/0"

    @property
    def triton_http(self) -> str:
        return self.triton_http_url or f"{self.host}:{self.triton_http_port}"

    @property
    def triton_grpc(self) -> str:
        return self.triton_grpc_url or f"{self.host}:{self.triton_grpc_port}"

    @property
    def triton_metrics(self) -> str:
        return f"{self.host}:{self.triton_metrics_port}"

    @property
    def kafka_home(self) -> Path:
        return self.cache_dir / f"kafka-{KAFKA_VERSION}"

    @property
    def triton_repository(self) -> Path:
        return self.state_dir / "triton" / "models"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"


class ModelSettings(BaseSettings):
    """Which model serves each role: ``smollm2``, ``tiny``, a hub id or a local folder."""

    model_config = SettingsConfigDict(env_prefix="CAI_", extra="ignore")

    model: str = Field("smollm2", description="Model family for every role.")
    policy_model: str | None = None
    critic_model: str | None = None
    reviser_model: str | None = None
    judge_model: str | None = None

    def for_role(self, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        return getattr(self, f"{role}_model") or self.model
