"""Settings every package shares (env prefix ``CAI_``): where the stack lives and how to reach
it (``StackSettings``), the Kafka clients' credentials (``KafkaAuth``, env ``CAI_KAFKA_SASL_*``),
which model serves each of the four generation roles and on which device (``ModelSettings``,
``ROLES``), and the fifth role, ``reward`` (the preference model), which Triton loads only for a
trainer that scores answers with it (``REWARD_ROLE``, ``trainer_roles``).

Every address can point at an external deployment (for example docker-compose):
set ``CAI_KAFKA_BOOTSTRAP``, ``CAI_REDIS_URL`` or ``CAI_TRITON_HTTP_URL`` /
``CAI_TRITON_GRPC_URL`` and ``cai stack up`` leaves that service alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KAFKA_VERSION = "3.9.1"
ROLES = ("policy", "critic", "reviser", "judge")  # the generation roles the pipeline calls
REWARD_ROLE = "reward"  # the preference model: scores (prompt, answer), loaded only when needed
# TrainerConfig modes that score the policy's samples with the served reward role.
REWARD_MODES = ("rloo",)
DEVICES = ("cpu", "cuda", "auto")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


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
    kafka_heap: str = Field(
        "512m", pattern=r"^[1-9][0-9]*[kKmMgG]$",
        description="The local broker's JVM heap (-Xms and -Xmx both, e.g. 512m or 1g): fixed "
        "and touched at start, so Kafka's memory does not creep up while it runs.")
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
    reward_model: str | None = Field(
        None, description="Base of the reward role (CAI_REWARD_MODEL); default: the policy's "
        "model, given a fresh score head.")
    device: Literal[DEVICES] = Field(
        "cpu", description="Where the serving engine, Triton's instances and the trainer run: "
        "cpu, cuda, or auto (cuda when torch sees a GPU).")

    def for_role(self, role: str) -> str:
        if role == REWARD_ROLE:
            return self.reward_model or self.for_role("policy")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of "
                             f"{', '.join((*ROLES, REWARD_ROLE))}")
        return getattr(self, f"{role}_model") or self.model


def trainer_roles(trainer: Mapping[str, Any]) -> tuple[str, ...]:
    """The roles a trainer with these ``TrainerConfig`` fields calls itself: the reward role
    when its mode scores samples with the served preference model, else none."""
    return (REWARD_ROLE,) if trainer.get("mode") in REWARD_MODES else ()


def resolve_device(device: str) -> str:
    """``cpu`` or ``cuda`` for a ``ModelSettings.device`` value (``auto`` asks torch)."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device != "auto":
        return device
    import torch  # only where a model runs: the worker never resolves a device

    return "cuda" if torch.cuda.is_available() else "cpu"


class KafkaAuth(BaseSettings):
    """SASL credentials of every Kafka client (faust/aiokafka and kafka-python), env
    ``CAI_KAFKA_SASL_USERNAME``, ``_PASSWORD``, ``_MECHANISM``. No username: plaintext without
    authentication, as the local stack's broker expects."""

    model_config = SettingsConfigDict(env_prefix="CAI_KAFKA_SASL_", extra="ignore")

    username: str | None = Field(None, description="SASL user; unset = no authentication.")
    password: SecretStr | None = Field(None, description="SASL password.")
    mechanism: Literal[SASL_MECHANISMS] = Field("PLAIN", description="SASL mechanism.")

    @model_validator(mode="after")
    def _password_with_user(self) -> KafkaAuth:
        if self.username and self.password is None:
            raise ValueError("CAI_KAFKA_SASL_USERNAME is set without CAI_KAFKA_SASL_PASSWORD; "
                             "set both (or neither, for a broker without authentication)")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.username)

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's clients (empty without credentials)."""
        if not self.enabled:
            return {}
        return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": self.mechanism,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.password.get_secret_value()}


def kafka_client_options() -> dict[str, Any]:
    """kafka-python keyword arguments for the configured credentials (env CAI_KAFKA_SASL_*)."""
    return KafkaAuth().kafka_python()
