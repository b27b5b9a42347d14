"""TrainerConfig: validation names the field and the fix; JSON and command-line round-trips."""

from __future__ import annotations

import argparse
import json

import pytest

from core.options import add_arguments, from_args
from trainer.config import CONFIG_FILE, TrainerConfig


@pytest.mark.parametrize("overrides, field", [
    ({"mode": "ppo"}, "mode"),
    ({"staleness_policy": "ignore"}, "staleness_policy"),
    ({"lr": 0.0}, "lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"beta": -0.1}, "beta"),
    ({"helpful_mix": 1.5}, "helpful_mix"),
    ({"max_staleness": -1}, "max_staleness"),
    ({"round_every_examples": 0}, "round_every_examples"),
    ({"round_every_seconds": 0}, "round_every_seconds"),
    ({"lora_targets": []}, "lora_targets"),
    ({"lora_r": 0}, "lora_r"),
    ({"promotion_threshold": -0.01}, "promotion_threshold"),
    ({"probe_size": -2}, "probe_size"),
    ({"max_length": 8}, "max_length"),
])
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ValueError) as info:
        TrainerConfig(**overrides)
    message = str(info.value)
    assert message.startswith(field), message
    assert any(word in message for word in ("set", "use", "pick", "name")), message


def test_full_fine_tuning_ignores_lora_fields():
    config = TrainerConfig(lora=False, lora_r=0, lora_targets=[])
    assert config.lora is False


def test_every_field_has_help_text():
    import dataclasses

    missing = [f.name for f in dataclasses.fields(TrainerConfig) if not f.metadata.get("help")]
    assert missing == []


def test_json_round_trip(tmp_path):
    config = TrainerConfig(mode="reward", lora=False, lr=3e-5, lora_targets=["q_proj"], seed=7)
    path = config.save(tmp_path)
    assert path.name == CONFIG_FILE  # config.json is the model's own config
    assert TrainerConfig.load(tmp_path) == config
    assert json.loads(path.read_text())["mode"] == "reward"


def test_unknown_json_field_is_refused():
    with pytest.raises(ValueError, match="unknown trainer config field.*learning_rate"):
        TrainerConfig.from_dict({"learning_rate": 1e-4})


def test_command_line_flags_override_defaults():
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainerConfig)
    args = parser.parse_args(["--mode", "reward", "--no-lora", "--lr", "0.001",
                              "--lora-targets", "q_proj", "v_proj", "--round-every-examples", "5"])
    config = from_args(TrainerConfig, args, TrainerConfig(beta=0.3))
    assert (config.mode, config.lora, config.lr, config.lora_targets,
            config.round_every_examples, config.beta) == ("reward", False, 0.001,
                                                          ["q_proj", "v_proj"], 5, 0.3)
