"""Model registry in the style of timm: ``register_model``, ``create_model``, ``list_models``.

Models know nothing of distillation: each maps an input batch to logits ``(N, C)`` (or ``(N, T, V)`` for
language models). Families take keyword arguments; the paper's named configurations are small registered
functions of their family. ``timm:<name>`` builds a timm model when timm is installed, ``hf:<path>`` a Hugging
Face transformers model from a local folder or config.json (:mod:`banets.models.hf`).
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import string
from collections.abc import Callable
from itertools import product
from typing import Any

import torch
import torch.nn as nn

from banets.config import HF, UserError, did_you_mean, qualified_name

TIMM = "timm:"
# what the data tell them
FROM_DATA = {TIMM: {"num_classes", "in_channels"}, HF: {"num_classes", "vocab_size", "max_length"}}
ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}
_FAMILIES: dict[str, ModelFactory] = {}  # a variant's family, whose options it takes
RENAMED = {  # names of banets 0.2, recorded by its runs: they resume under the new names
    "dense_shaped_preresnet_14_0.5": "dense_shaped_preresnet_14_0_5",
    "dense_shaped_wrn_4_0.5": "dense_shaped_wrn_4_0_5",
}


def register_model(
    name: str | ModelFactory | None = None, factory: ModelFactory | None = None, *, family: ModelFactory | None = None
) -> Any:
    """Register a model factory: ``@register_model`` (the key is the function's name), ``@register_model("name")``
    or ``register_model("name", factory)``. A variant of a family, ``@register_model(family=wide_resnet)``, is a
    function whose body calls the family's builder with its own values and passes its ``**options`` on; it takes
    the family's options too (``model_options``)."""
    if callable(name):  # bare @register_model
        return register_model(None, name)

    def add(fn: ModelFactory) -> ModelFactory:
        key = name or fn.__name__
        if key in _REGISTRY and qualified_name(_REGISTRY[key]) != qualified_name(fn):  # the same one again: replaced
            raise ModelError(f"model {key!r} is registered twice; choose another name")
        _REGISTRY[key] = fn
        if family is not None:
            _FAMILIES[key] = family
        return fn

    return add(factory) if factory is not None else add


def model_options(name: str) -> list[inspect.Parameter]:
    """The options of registered model ``name`` with their defaults: its factory's own parameters, then those of
    the family a variant passes its ``**options`` to."""
    own = [p for p in inspect.signature(_factory(name)).parameters.values() if p.kind is not p.VAR_KEYWORD]
    family = _FAMILIES.get(RENAMED.get(name, name))
    inherited = inspect.signature(family).parameters.values() if family is not None else []
    return own + [p for p in inherited if p.name not in {q.name for q in own}]


class ModelError(UserError, ValueError):
    """An unknown model name, or a model whose package is missing."""


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs`` (e.g. ``num_classes=100``); ``timm:<name>`` builds
    timm's model ``<name>`` (``in_channels`` is passed as timm's ``in_chans``), ``hf:<path>`` a transformers model
    (``task`` and config fields as options)."""
    if name.startswith(TIMM):
        return create_timm_model(name[len(TIMM):], **kwargs)
    if name.startswith(HF):
        from banets.models.hf import create_hf_model  # imports registry: here, not at the top

        return create_hf_model(name[len(HF):], **kwargs)
    return _factory(name)(**kwargs)


def timm_broken(error: Exception) -> ModelError:
    return ModelError(
        f"timm is installed but fails at import ({str(error).splitlines()[0]}): usually a torchvision that is not "
        f"built for this torch ({torch.__version__}); install the torchvision built for this torch from the same "
        f"index as torch (pytorch.org lists the pairs), or uninstall torchvision and timm"
    )


def create_timm_model(name: str, **kwargs) -> nn.Module:
    try:
        import timm
    except ImportError as error:
        if error.name != "timm":
            raise timm_broken(error) from None
        raise ModelError(f"model '{TIMM}{name}' needs timm: install the PyTorch build for your platform first, then "
                         f"`pip install timm`") from None
    except (RuntimeError, OSError) as error:  # torchvision's operators do not load: built for another torch
        raise timm_broken(error) from None
    if "in_channels" in kwargs:
        kwargs["in_chans"] = kwargs.pop("in_channels")
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as error:  # timm's "Unknown model"
        raise ModelError(f"timm has no model {name!r} ({error}); see timm.list_models()") from None


def model_parameters(name: str) -> set[str] | None:
    """The keyword arguments that model ``name``'s factory accepts (None: any, as timm's and transformers' models
    take)."""
    if name.startswith((TIMM, HF)):
        return None
    return {p.name for p in model_options(name)}


def options_from_data(name: str) -> set[str]:
    """The options that model ``name`` takes from the data (num_classes, in_channels, vocab_size...)."""
    route = next((prefix for prefix in FROM_DATA if name.startswith(prefix)), None)
    return FROM_DATA[route] if route else {p.name for p in model_options(name)}


def _factory(name: str) -> ModelFactory:
    _import_builtin_models()
    name = RENAMED.get(name, name)
    if name not in _REGISTRY:
        hint = did_you_mean(name, _REGISTRY, n=3, quote=False) or "see `banets models` for the list"
        raise ModelError(
            f"unknown model {name!r}; {hint} (timm's models: timm:<name>; your own: register_model and --import)"
        )
    return _REGISTRY[name]


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern``."""
    _import_builtin_models()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _import_builtin_models() -> None:
    import banets.models  # noqa: F401  (registers the built-in families on import)


def count_parameters(name: str) -> int | None:
    """Parameters of model ``name`` built with its defaults, on the meta device (no memory), and with the paper's
    sizes for what the data gives and it has no default for (``_paper_sizes``); None if it needs other arguments."""
    import torch

    try:
        with torch.device("meta"):
            return sum(p.numel() for p in create_model(name, **_paper_sizes(name)).parameters())
    except TypeError:
        return None


def _paper_sizes(name: str) -> dict[str, Any]:
    """The data options (``experiment.model_factory``) that model ``name`` has no default for, at the paper's sizes:
    Penn Tree Bank's 10,000 words."""
    if name.startswith((TIMM, HF)):
        return {}
    parameters = {p.name: p for p in model_options(name)}
    sizes = {"vocab_size": 10_000, "words": _ptb_like_words()}
    return {k: v for k, v in sizes.items() if k in parameters and parameters[k].default is inspect.Parameter.empty}


@functools.cache
def _ptb_like_words() -> list[str]:
    """10,000 words spelled like PTB's for a character-aware model: ``<unk>``, ``<eos>`` and 3-letter words over a-z
    (31 characters with the word markers and padding, as docs/models.md counts)."""
    return ["<unk>", "<eos>", *map("".join, product(string.ascii_lowercase, repeat=3))][:10_000]


def describe_models(pattern: str = "*") -> str:
    """One line per registered model matching ``pattern``: name, parameters (``count_parameters``), the first line of
    its docstring; for a single match, its options and their defaults too."""
    names = list_models(pattern)
    if not names and not any(c in pattern for c in "*?["):
        names = list_models(f"*{pattern}*")  # a bare word that names no model: the names holding it
    if not names:
        raise ModelError(
            f"no registered model matches {pattern!r}; `banets models` lists them all (yours need --import MODULE)"
        )
    width = max(map(len, names))
    lines = []
    for name in names:
        count = count_parameters(name)
        size = f"{count / 1e6:.2f}M" if count is not None else "-"
        doc = (inspect.getdoc(_REGISTRY[name]) or "").split("\n")[0]
        lines.append(f"{name:{width}s} {size:>8s}  {doc}")
    if len(names) == 1:  # one model asked for: its options too
        options = model_options(names[0])
        lines.append(
            "options: " + ", ".join(f"{p.name}={p.default!r}" if p.default is not p.empty else p.name for p in options)
        )
    return "\n".join(lines)
