"""Typed configs, presets and --set overrides."""

import re

import pytest

from banets import config as configs
from banets.config import BornAgainConfig, ConfigError, DataConfig, ExperimentConfig, TrainConfig, load_config


def test_overrides_are_parsed_as_yaml_and_typed():
    cfg = load_config("demo", ["optim.lr=0.3", "seeds=[1,2]", "optim.grad_clip=5", "data.path=/x", "ban.extra_losses=[cwtm]"])
    assert cfg.optim.lr == 0.3 and cfg.seeds == [1, 2] and cfg.optim.grad_clip == 5.0
    assert cfg.data.path == "/x" and cfg.ban.extra_losses == ["cwtm"]


def test_an_override_replaces_a_mapping_instead_of_merging_into_it():
    demo = load_config("demo")
    assert demo.ban.controls and demo.model.options == {"in_channels": 1, "width": 8}
    cfg = load_config("demo", ["ban.controls={}", "model.options={in_channels: 1}", "model.options.width=4"])
    assert cfg.ban.controls == {} and cfg.model.options == {"in_channels": 1, "width": 4}
    assert cfg.model.name == demo.model.name and cfg.optim == demo.optim  # the keys beside it are kept


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=0.1", "unknown config key 'optim.lrr'; did you mean optim.lr"),
        ("optim.epochs=1.5", "optim.epochs expects int, got 1.5"),
        ("optim.lr=fast", "optim.lr expects float, got 'fast'"),
        ("optim.nesterov=1", "optim.nesterov expects bool"),
        ("seeds=3", "seeds expects a list"),
        ("data=3", "data is a section"),
        ("optim.lr", "is not key=value"),
        ("modle.name=x", "did you mean model.name"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config("demo", [override])


@pytest.mark.parametrize("build, message", [
    (lambda: TrainConfig(epochs=0), "optim.epochs must be a positive number of epochs, got 0"),
    (lambda: TrainConfig(epochs=-3), "optim.epochs must be a positive number of epochs, got -3"),
    (lambda: TrainConfig(epochs="10"), "optim.epochs expects int, got '10'"),
    (lambda: TrainConfig(lr=-0.1), "optim.lr must be a positive finite number, got -0.1"),
    (lambda: TrainConfig(lr=float("inf")), "optim.lr must be a positive finite number, got inf"),
    (lambda: TrainConfig(momentum=5), "optim.momentum must be in [0, 1), got 5.0"),
    (lambda: TrainConfig(progress="bar"), "optim.progress='bar' is not one of model, epoch, none"),
    (lambda: TrainConfig(schedule="cosin"), "did you mean 'cosine'?"),
    (lambda: TrainConfig(optimizer="lamb"), "optim.optimizer='lamb' is not one of sgd, adam, adamw"),
    (lambda: TrainConfig(warmup_steps=100), "optim.warmup_steps must be used with optim.schedule_every=step"),
    (lambda: TrainConfig(schedule="plateau", schedule_every="step"), "(plateau decides once an epoch)"),
    (lambda: TrainConfig(accumulate=0), "optim.accumulate must be a positive number of batches, got 0"),
    (lambda: TrainConfig(schedule_every="step", warmup_steps=10, schedule=lambda optimizer, total: None),
     "optim.warmup_steps must be 0 with a schedule of your own (put the warmup in it)"),
    (lambda: DataConfig(max_length=0), "data.max_length must be a positive integer, got 0"),
    (lambda: DataConfig(tokenizer="bytes"), "data.tokenizer must be one of whitespace, words, or hf:<path> of a"),
    (lambda: TrainConfig(precision="fp8"), "optim.precision='fp8' is not one of"),
    (lambda: BornAgainConfig(generations=-1), "ban.generations must be 0 or more, or auto, got -1"),
    (lambda: BornAgainConfig(generations="many"), "ban.generations must be 0 or more, or auto, got 'many'"),
    (lambda: BornAgainConfig(generations="auto", max_generations=0), "ban.max_generations must be 1 or more, got 0"),
    (lambda: BornAgainConfig(cache_teacher="int8"), "ban.cache_teacher='int8' is not one of"),
    (lambda: DataConfig(batch_size=0), "data.batch_size must be a positive integer, got 0"),
    (lambda: DataConfig(split_seed=10**20), "data.split_seed must be an integer in [0, 2147483647]"),
    (lambda: ExperimentConfig(seeds=[10**20]), "seeds must be integers in [0, 2147483647]"),
])
def test_a_section_refuses_a_value_out_of_range_when_it_is_made(build, message):
    """Where these are checked: the CLI's --set and born_again's arguments make the same sections (one CLI case per
    error class is in test_bad_input)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        build()


def test_unknown_preset_suggests_near_names():
    with pytest.raises(ConfigError, match="did you mean demo"):
        load_config("dem0")


@pytest.mark.parametrize("name", configs.preset_names())
def test_every_preset_loads_and_validates(name):
    cfg = load_config(name)
    assert cfg.name == name and cfg.optim.epochs >= 0 and cfg.description


def test_extends_merges_nested_keys(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: demo\noptim: {lr: 0.9}\ndescription: child\n")
    cfg = load_config(str(child))
    assert cfg.optim.lr == 0.9
    assert cfg.optim.epochs == load_config("demo").optim.epochs
    assert cfg.model.name == "small_cnn" and cfg.name == "child"


def test_option_values_may_be_mappings_of_any_keys_but_config_keys_are_names():
    assert load_config("demo", ["ban.loss_options={class_weights: {0: 1.0, 1: 2.0}}"]).ban.loss_options == {
        "class_weights": {0: 1.0, 1: 2.0}}
    with pytest.raises(ConfigError, match="model.options has the key 1, not a name"):
        load_config("demo", ["model.options={1: 2}"])
