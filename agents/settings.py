"""Knobs of the critique -> revise -> compare pipeline (env prefix ``CAI_PIPELINE_``).

Addresses default to the local stack (``core.settings.StackSettings``). Read these at entry
points (``cai worker``, whose flags are built from these fields); tests pass values to the
constructor. The strategy names are the wire contract's (``streams.records``); the other
vocabularies are defined here, once.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.settings import StackSettings
from streams.records import PREFERENCE_STRATEGIES, REVISION_STRATEGIES

COMPARES = ("initial-vs-final", "policy-samples", "none")
PLACEMENTS = ("system", "user-suffix")
CONTRASTIVE_LABELS = ("construction", "judge")


class PipelineSettings(BaseSettings):
    """How the agents draw principles, batch, retry and dedupe."""

    model_config = SettingsConfigDict(env_prefix="CAI_PIPELINE_", extra="ignore")

    rounds: int = Field(2, ge=1, le=16,
                        description="critique/revision rounds per answer (the paper used 4)")
    num_samples: int = Field(1, ge=1, le=16, description="policy samples per prompt (k)")
    compare: Literal[COMPARES] = Field(
        "initial-vs-final", description="which pairs the judge labels")
    judge_principles: int = Field(1, ge=1, le=16,
                                  description="comparison principles averaged per label (each in "
                                  "both orders)")
    judge_cot: bool = Field(False, description="chain-of-thought judging (probabilities clamped to "
                            "40-60%)")
    revise_helpful: bool = Field(False, description="also critique/revise prompts of kind "
                                 "'helpful'")
    strategy: Literal[REVISION_STRATEGIES] = Field(
        "critique-revise",
        description="revision strategy: 'critique-revise' (the paper's), 'direct' "
        "(revise under the principle, no critique) or 'context' (the policy answers again with the "
        "constitution as system prompt; training on it distils the context); docs/strategies.md")
    preference: Literal[PREFERENCE_STRATEGIES] = Field(
        "judge", description="preference strategy: 'judge' (soft (A)/(B) labels), "
        "'revision-over-initial' (hard label for the final revision) or 'contrastive' (RLCD: a "
        "policy answer prompted toward the constitution over one prompted away from it)")
    context_placement: Literal[PLACEMENTS] = Field(
        "system", description="where context and contrast answers get the constitution: as system "
        "prompt (system_prompt / contrast_prompt), or appended to the user's turn in parentheses "
        "(reminder / contrast_prompt); training always uses the plain prompt")
    context_temperature: float | None = Field(
        None, ge=0, description="sampling temperature of context and contrast answers; default: "
        "temperature (lower gives answers that follow the context more closely)")
    context_opening: bool = Field(
        False,
        description="context answers to red-team prompts, and the 'toward' side of contrastive "
        "pairs on them, start with the constitution's decline_opening and the policy writes the "
        "reason; helpful prompts never get it (docs/strategies.md)")
    helpful_pairs: bool = Field(
        False, description="for each helpful prompt also a preference pair, by construction: the "
        "policy's answer over the constitution's bare decline (the first sentence of "
        "decline_opening); it teaches that harmless requests in alarming words get answered")
    helpful_pair_decline: Literal["bare", "reasoned"] = Field(
        "bare", description="the declined side of a helpful prompt's pair (helpful_pairs): "
        "'bare', the first sentence of decline_opening; or 'reasoned', the policy's own decline "
        "of that prompt (decline_opening continued greedily, cut after its reason), so that a "
        "preference model learns that declining a harmless request with a made-up reason is "
        "worse than answering it, not that giving a reason is good in itself")
    reason_pairs: bool = Field(
        False, description="for each red-team prompt whose target is a decline with its reason, "
        "also a pair preferring it over the constitution's bare decline (the first sentence of "
        "decline_opening). Both start alike, so the pair moves only what follows the decline: "
        "the reason rather than nothing (helpful pairs that reject a reasoned decline otherwise "
        "teach the policy to decline without one)")
    warning_pairs: bool = Field(
        False, description="with helpful_pair_decline='reasoned': for each helpful prompt also "
        "its answer over the reason of the policy's decline alone (\"Doing this could "
        "potentially harm ...\"): the decline's reason given as a warning, without the "
        "decline, is how a trained policy's reason leaked into benign answers")
    stop_pairs: bool = Field(
        False, description="for each red-team target cut from a decline that went on to comply "
        "(\"I can't help with that. Doing this could harm ... Here's how: 1. ...\"), also a "
        "pair preferring the cut decline over the whole answer. Both start with the same "
        "decline and reason, so the pair moves only what follows the reason: stopping rather "
        "than going on (the cut target alone never shows the policy its own continuation)")
    skip_settled_declines: bool = Field(
        False, description="drop the SFT target of a red-team prompt whose policy answer already "
        "declined harmlessly with a reason: it teaches nothing new, and training on it again each "
        "round only makes declining likelier everywhere, benign prompts included")
    contrastive_label: Literal[CONTRASTIVE_LABELS] = Field(
        "construction", description="contrastive pairs: p_chosen=1 by construction, or the judge's "
        "soft probability that the 'toward' answer is better")
    seed: int = Field(0, description="seeds principle draws and sampling; recorded on every record")
    constitution: Path | None = Field(None, description="YAML file or paper-format folder; default "
                                      "built in")

    batch_size: int = Field(16, ge=1, description="most records per Triton batch")
    batch_within_s: float = Field(0.5, gt=0, description="max wait to fill a batch, from its "
                                  "first record")
    batch_idle_s: float = Field(0.005, gt=0, description="a batch leaves once no record arrived "
                                "for this long (an idle stage starts at once)")
    batches_in_flight: int = Field(
        1, ge=1, description="batches a stage works on at once; with 2 the next batch's claim and "
        "model call overlap the previous one's wait for Kafka acks (offsets are still committed "
        "in order, each only after its batch was processed). It pays off only where acks are "
        "slow (a remote broker): locally the four stages already overlap one another's waits in "
        "the worker's event loop, and 2 measured 405 against 452 prompts/s (null models)")
    max_attempts: int = Field(3, ge=1, description="Triton attempts before a record goes to "
                              "dead-letter")
    backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(8.0, ge=0)
    park_backoff_s: float = Field(30.0, ge=0, description="longest wait between retries of a "
                                  "batch parked by an outage (Triton down or hung)")
    max_prompt_chars: int = Field(8000, ge=1, description="longer prompts go to dead-letter")
    dead_letter_payload_bytes: int = Field(65536, ge=0, description="raw payload kept in "
                                           "dead-letter")

    policy_max_new_tokens: int = Field(128, ge=1)
    critique_max_new_tokens: int = Field(96, ge=1)
    revision_max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.7, ge=0)
    critic_temperature: float = Field(0.3, ge=0)

    inference: Literal["triton", "null"] = Field(
        "triton", description="'null': no model, every call answers at once (serving.inference."
        "NullInference), to measure the stream machinery alone (`cai bench --null-models`)")
    redis_url: str | None = Field(None, description="default: the local stack's Redis")
    triton_grpc: str | None = Field(None, description="default: the local stack's Triton")
    triton_timeout_s: float = Field(300.0, gt=0)
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
                           description="stable id lets a restarted worker take back its own claims")
    claim_lease_s: float = Field(60.0, ge=1, description="a dead worker's claims block others this "
                                 "long")
    claim_wait_s: float = Field(900.0, ge=1, description="longest wait for another worker's live "
                                "claim; then it is taken over (the holder is stuck; a repeat it "
                                "may still send is dropped by record id)")
    redis_timeout_s: float = Field(10.0, gt=0, description="socket timeout of the worker's Redis "
                                   "calls (a hung Redis is retried, not waited on forever)")
    seen_ttl_s: int = Field(14 * 24 * 3600, ge=60, description="lifetime of idempotency keys")
    session_timeout_s: float = Field(10.0, ge=6, description="a dead worker's partitions move "
                                     "after this")
    data_dir: Path = Field(Path(".cai") / "faust", description="Faust's local state")
    metrics_port: int = Field(9101, ge=0, le=65535,
                              description="Prometheus /metrics port; 0 turns it off; a busy port "
                              "(several workers on one host) falls back to a free one")

    @model_validator(mode="after")
    def _consistent(self) -> PipelineSettings:
        if self.preference == "revision-over-initial" and self.compare != "initial-vs-final":
            raise ValueError("preference='revision-over-initial' labels (initial answer, final "
                             "revision) pairs; set CAI_PIPELINE_COMPARE=initial-vs-final or choose "
                             "another preference")
        if self.compare == "policy-samples" and self.num_samples < 2:
            raise ValueError("compare='policy-samples' needs num_samples >= 2; set "
                             "CAI_PIPELINE_NUM_SAMPLES=2 or choose compare='initial-vs-final'")
        return self

    @property
    def redis_address(self) -> str:
        return self.redis_url or StackSettings().redis_address

    @property
    def triton_address(self) -> str:
        return self.triton_grpc or StackSettings().triton_grpc
