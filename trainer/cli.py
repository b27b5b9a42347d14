"""`cai trainer`: run the live trainer against the stack (Kafka topics -> rounds -> Triton).

    cai trainer                      # defaults: DPO + SFT, LoRA, K=32 examples, T=300 s
    cai trainer --mode reward --round-every-examples 16 --max-rounds 3
    cai trainer --config trainer.json --lr 5e-5   # flags override the JSON file

Every TrainerConfig field is a flag (``cai trainer -h`` lists them with their help text).
Checkpoints go to ``<state_dir>/trainer/rounds/`` unless ``--trainer-dir`` says otherwise.
SIGTERM/SIGINT stop after the current round; SIGKILL is safe too (see trainer/loop.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path

from trainer.config import TrainerConfig

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="JSON file with TrainerConfig fields")
    parser.add_argument("--state-dir", help="the stack's state folder (default .cai, env CAI_STATE_DIR)")
    parser.add_argument("--trainer-dir", type=Path,
                        help="checkpoints and round records (default <state_dir>/trainer)")
    parser.add_argument("--max-rounds", type=int, default=None,
                        help="exit after this many rounds (default: run until stopped)")
    parser.add_argument("--keep-checkpoints", type=int, default=3,
                        help="promoted rounds whose weights stay on disk (older ones keep only "
                             "their json records)")
    TrainerConfig.add_arguments(parser.add_argument_group("hyper-parameters"))


def build_config(args: argparse.Namespace) -> TrainerConfig:
    base = TrainerConfig.from_dict(json.loads(args.config.read_text())) if args.config else None
    return TrainerConfig.from_args(args, base)


def cmd_trainer(args: argparse.Namespace) -> int:
    from cai.settings import ModelSettings, StackSettings
    from serving.models import resolve
    from streams.settings import StreamSettings
    from streams.topics import PREFERENCES, SFT, topic_name
    from trainer.loop import KafkaSource, TrainerLoop
    from trainer.publisher import StackPublisher
    from trainer.refusal import load_refusal_prompts

    try:
        config = build_config(args)
        load_refusal_prompts(config)  # a bad refusal-prompt file fails now, not after the model loads
    except (ValueError, OSError) as exc:
        raise SystemExit(f"cai trainer: bad configuration: {exc}") from None
    stack = StackSettings(**({"state_dir": args.state_dir} if args.state_dir else {}))
    streams = StreamSettings(kafka_bootstrap=stack.kafka_address)
    base_model = resolve(config.model or ModelSettings().for_role("policy"), stack.cache_dir)
    trainer_dir = args.trainer_dir or stack.state_dir / "trainer"
    sft_topic, pref_topic = topic_name(SFT, streams), topic_name(PREFERENCES, streams)
    loop = TrainerLoop(
        config, trainer_dir, base_model,
        source=KafkaSource(streams.kafka_address, [sft_topic, pref_topic]),
        publisher=StackPublisher(stack, streams), sft_topic=sft_topic,
        preferences_topic=pref_topic, keep_checkpoints=args.keep_checkpoints)
    stop = threading.Event()

    def request_stop(signum, _frame):
        logger.info("signal %d: stopping after the current round", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    logger.info("trainer: %s; base model %s; checkpoints in %s", config, base_model, trainer_dir)
    try:
        rounds = loop.run(max_rounds=args.max_rounds, stop=stop)
    finally:
        loop.close()
    logger.info("trainer: %d round(s) done, policy v%d", rounds, loop.version)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `cai trainer` to the `cai` parser."""
    parser = sub.add_parser(
        "trainer", help="train the policy live on the sft and preferences topics",
        description="Consume SFT revisions and soft preference labels, train in rounds "
        "(SFT + DPO, or a preference model), gate on a held-out probe, publish to Triton.")
    add_arguments(parser)
    parser.set_defaults(func=cmd_trainer)
