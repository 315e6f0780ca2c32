"""The model registry: every named configuration is a function that `grep "def <name>"` finds, takes its family's
options, and `banets models` shows its parameter count and the first line of its docstring."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

import banets.models
from banets.experiment import SetupError, model_factory
from banets.models.registry import (
    _REGISTRY,
    count_parameters,
    create_model,
    describe_models,
    list_models,
    _FAMILIES,
    RENAMED,
    model_options,
    model_parameters,
)

MODELS = Path(banets.models.__file__).parent
BUILTIN = [name for name in list_models() if _REGISTRY[name].__module__.startswith("banets.models.")]


def meta_count(name: str, **kwargs) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in create_model(name, **kwargs).parameters())


@pytest.mark.parametrize("name", BUILTIN)
def test_every_model_has_a_one_line_summary_of_its_own(name: str) -> None:
    doc = inspect.getdoc(_REGISTRY[name])
    assert doc, name
    summary = doc.split("\n")[0]
    assert summary.endswith(".") and "partial" not in summary, summary


def test_every_registered_name_is_a_def_in_the_models_source() -> None:
    source = "\n".join(path.read_text() for path in MODELS.glob("*.py"))
    defined = set(re.findall(r"^def (\w+)\(", source, flags=re.MULTILINE))
    functions = {name: name for name in BUILTIN}  # the registry key is the function's name
    assert {name for name, function in functions.items() if function not in defined} == set()
    assert all(_REGISTRY[name].__name__ == function for name, function in functions.items())


def test_a_variant_takes_its_familys_options_with_its_fixed_values_as_defaults() -> None:
    assert model_parameters("resnet8") == model_parameters("resnet_cifar") == {"depth", "width", "num_classes",
                                                                               "shortcut"}
    defaults = {p.name: p.default for p in model_options("resnet8")}
    assert defaults == {"depth": 8, "width": 16, "num_classes": 10, "shortcut": "A"}
    assert model_parameters("cnn_lstm_small") == model_parameters("cnn_lstm")


def test_a_variants_fixed_values_are_overridable_defaults() -> None:
    assert meta_count("resnet8") == 75_290
    assert meta_count("resnet8", depth=20, num_classes=100) == meta_count("resnet20", num_classes=100) == 275_572


@pytest.mark.parametrize("name", sorted(_FAMILIES))
def test_a_variants_own_options_are_its_familys(name: str) -> None:
    """What a misspelt argument of a variant (depht=8) would break: every option it sets, its family takes."""
    own = set(inspect.signature(_REGISTRY[name]).parameters) - {"options"}
    assert own <= set(inspect.signature(_FAMILIES[name]).parameters)


def test_the_names_of_banets_0_2_still_build_their_models() -> None:
    for old, new in RENAMED.items():
        assert old not in list_models() and new in list_models()
        assert model_parameters(old) == model_parameters(new)


def test_model_factory_refuses_unknown_options_and_passes_a_variant_the_data_options_it_takes() -> None:
    with pytest.raises(SetupError, match="takes no option bogus"):
        model_factory("resnet8", {"bogus": 1}, {})
    data = {"num_classes": 100, "in_channels": 3, "vocab_size": 50}
    assert model_factory("resnet8", {"width": 4}, data)().classifier.out_features == 100
    assert model_factory("lstm_lm_small", {}, data)().decoder.out_features == 50


def test_language_models_are_counted_at_the_ptb_vocabulary() -> None:
    assert count_parameters("lstm_lm_large") == 51_034_000
    assert count_parameters("lstm_lm_small") == 2_653_200
    assert count_parameters("cnn_lstm_large") == 19_372_865  # 31 characters, as in docs/models.md


def test_banets_models_shows_counts_and_summaries_within_120_columns() -> None:
    lines = {line.split()[0]: line for line in describe_models().splitlines()}
    assert set(BUILTIN) <= set(lines)
    assert max(len(lines[name]) for name in BUILTIN) <= 120
    expected = {"resnet20": "0.27M", "wrn_28_10": "36.48M", "preresnet_1001": "10.33M", "lstm_lm_large": "51.03M",
                "cnn_lstm_large": "19.37M"}
    assert {name: lines[name].split()[1] for name in expected} == expected
    assert "Tables 1 and 3 row Wide-ResNet-28-10 (36M)" in lines["wrn_28_10"]


def test_one_model_asked_for_shows_its_options():
    from banets.models.registry import describe_models

    assert describe_models("resnet20").splitlines()[-1] == "options: depth=20, width=16, num_classes=10, shortcut='A'"
