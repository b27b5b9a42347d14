"""`cai trainer`: run the live trainer against the stack (Kafka topics -> rounds -> Triton).

    cai trainer                      # defaults: DPO + SFT, LoRA, K=32 examples, T=300 s
    cai trainer --mode reward --round-every-examples 16 --max-rounds 3
    cai trainer --recipe rl                       # RLOO against the served preference model
    cai trainer --config trainer.json --lr 5e-5   # flags override the JSON file
    cai trainer --recipe context-distillation     # the trainer fields `cai run` gives it

Every TrainerConfig field is a flag (``cai trainer -h`` lists them with their help text), built
from the field (``core.options``); ``cai run`` hands its recipe over as a ``--config`` file.
Checkpoints go to ``<state_dir>/trainer/rounds/`` unless ``--trainer-dir`` says otherwise.
Prometheus metrics (``trainer/metrics.py``) are served on ``--metrics-port`` (default 9102).
SIGTERM/SIGINT stop after the current round; SIGKILL is safe too (see trainer/loop.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from core.options import add_arguments, from_args, given, option
from core.recipes import RECIPES, trainer_fields
from core.settings import ModelSettings, StackSettings, resolve_device
from trainer.config import TrainerConfig
from trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)


@dataclass
class TrainerCommand:
    config: Path | None = option(None, "JSON file with TrainerConfig fields")
    recipe: str | None = option(
        None, "start from the TrainerConfig fields `cai run` uses for this recipe "
        "(core/recipes.py); --config and flags go on top", choices=sorted(RECIPES))
    trainer_dir: Path | None = option(
        None, "checkpoints and round records (default <state_dir>/trainer)")
    max_rounds: int | None = option(
        None, "exit after this many rounds (default: run until stopped)")
    keep_checkpoints: int = option(
        3, "promoted rounds whose weights stay on disk (older ones keep only their json records)")


def build_config(config_file: Path | None, overrides: dict,
                 recipe: str | None = None) -> TrainerConfig:
    """The recipe's fields, then the ``--config`` file's (or the defaults), then the flags."""
    fields = trainer_fields(recipe) if recipe else {}
    if config_file:
        fields.update(json.loads(config_file.read_text()))
    return dataclasses.replace(TrainerConfig.from_dict(fields), **overrides)


def cmd_trainer(command: TrainerCommand, stack: StackSettings, overrides: dict,
                settings: TrainerSettings | None = None) -> int:
    from core.metrics import serve as serve_metrics
    from serving.models import resolve
    from streams.settings import StreamSettings
    from streams.topics import COMPARE, CRITIQUE, PREFERENCES, PROMPTS, REVISE, SFT, topic_name
    from trainer.gate import load_dev_set
    from trainer.loop import KafkaPipeline, KafkaSource, TrainerLoop
    from trainer.publisher import StackPublisher

    try:
        config = build_config(command.config, overrides, command.recipe)
        load_dev_set(config)  # a bad gate-prompt file fails now, not after loading the model
    except (ValueError, OSError) as exc:
        raise SystemExit(f"cai trainer: bad configuration: {exc}") from None
    if config.nice:
        # Serving first: when a round and the stages want the same cores, the stages win.
        os.nice(config.nice)
    streams = StreamSettings(kafka_bootstrap=stack.kafka_address)
    models = ModelSettings()
    device = resolve_device(models.device)
    if device != "cpu":
        import torch

        torch.set_default_device(device)  # the policy, its batches and the probe's generator
    base_model = resolve(config.model or models.for_role("policy"), stack.cache_dir)
    trainer_dir = command.trainer_dir or stack.state_dir / "trainer"
    from trainer.checkpoint import TrainerLocked
    from trainer.checkpoint import lock as lock_trainer_dir

    try:
        held = lock_trainer_dir(trainer_dir)  # noqa: F841 - held until the process exits
    except TrainerLocked as exc:
        raise SystemExit(f"cai trainer: {exc}") from None
    sft_topic, pref_topic = topic_name(SFT, streams), topic_name(PREFERENCES, streams)
    rollouts = None
    if config.mode == "rloo":  # samples and scores come from the served policy and reward roles
        from serving.client import InferenceClient
        from serving.inference import TritonInference
        from trainer.rl import Rollouts

        # A round's prompts go in at once and queue behind one another's batches: a long
        # timeout, so that a queued request is not sent twice.
        rollouts = Rollouts(lambda: TritonInference(InferenceClient(stack.triton_grpc,
                                                                    timeout_s=1800.0)))
    loop = TrainerLoop(
        config, trainer_dir, base_model,
        source=KafkaSource(streams.kafka_address, [sft_topic, pref_topic]),
        publisher=StackPublisher(stack, streams), sft_topic=sft_topic,
        preferences_topic=pref_topic, keep_checkpoints=command.keep_checkpoints,
        pipeline=KafkaPipeline(
            streams.kafka_address,
            [topic_name(t, streams) for t in (PROMPTS, CRITIQUE, REVISE, COMPARE)], streams.app_id),
        rollouts=rollouts)
    stop = threading.Event()

    def request_stop(signum, _frame):
        logger.info("signal %d: stopping after the current round", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    serve_metrics((settings or TrainerSettings()).metrics_port, "trainer", stack.host)
    logger.info("trainer: %s; base model %s on %s; checkpoints in %s", config, base_model, device,
                trainer_dir)
    try:
        rounds = loop.run(max_rounds=command.max_rounds, stop=stop)
    finally:
        loop.close()
    logger.info("trainer: %d round(s) done, policy v%d", rounds, loop.version)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `cai trainer` to the `cai` parser."""
    parser = sub.add_parser(
        "trainer", help="train the policy live on the sft and preferences topics",
        description="Consume SFT revisions and soft preference labels, train in rounds "
        "(SFT + DPO, or a preference model) once the pipeline has drained, gate each round on "
        "the dev split, publish to Triton.")
    add_arguments(parser, TrainerCommand)
    add_arguments(parser, StackSettings, only=("state_dir",))
    add_arguments(parser, TrainerSettings)
    add_arguments(parser.add_argument_group("hyper-parameters"), TrainerConfig)
    parser.set_defaults(func=lambda args: cmd_trainer(
        from_args(TrainerCommand, args), StackSettings(**given(StackSettings, args)),
        given(TrainerConfig, args), TrainerSettings(**given(TrainerSettings, args))))
