"""The trainer process's own settings (env prefix ``CAI_TRAINER_``), apart from its
hyper-parameters (``trainer/config.py``): what a deployment sets, not what a round does."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainerSettings(BaseSettings):
    """How the trainer process is reached."""

    model_config = SettingsConfigDict(env_prefix="CAI_TRAINER_", extra="ignore")

    metrics_port: int = Field(9102, ge=0, le=65535,
                              description="Prometheus /metrics port; 0 turns it off; a busy port "
                              "falls back to a free one")
