"""Serving knobs (env prefix ``CAI_SERVING_``), written into each role's config.pbtxt.

``render_repository`` falls back to these for every knob it is not given, so
``cai stack up`` and docker-compose pick them up from the environment, for example
``CAI_SERVING_THREADS=2 CAI_SERVING_MAX_QUEUE_DELAY_US=20000 cai stack up``.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAI_SERVING_", extra="ignore")

    threads: int = Field(1, ge=1, description="torch threads in each model instance (the least "
                         "it gets when share_cores is on).")
    share_cores: bool = Field(
        True, description="Split the machine's cores among the instances busy at the moment, "
        "instead of a fixed `threads` each (serving/core_share.py).")
    hot_swap: bool = Field(
        True, description="The policy's instances take a newly published version's weights in "
        "place, between batches, instead of a Triton model reload (serving/hot_swap.py).")
    instances: int = Field(1, ge=1, description="Model instances (processes) per role.")
    max_batch_size: int = Field(16, ge=1, description="Most requests Triton batches into one "
                                "execute.")
    batching: bool = Field(True, description="Triton dynamic batching on/off.")
    max_queue_delay_us: int = Field(10_000, ge=0,
                                    description="How long a request may wait for a batch.")
    dtype: str = Field("float32", description="torch dtype of the weights: float32 or bfloat16.")
    prefix_min_tokens: int = Field(
        32, ge=0,
        description="Share the KV cache of a common prompt prefix this long or longer; 0 = off.")
