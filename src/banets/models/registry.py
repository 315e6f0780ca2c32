"""Model registry in the style of timm: ``register_model``, ``create_model``, ``list_models``.

Models know nothing of distillation: each maps an input batch to logits ``(N, C)`` (or ``(N, T, V)`` for
language models). Families take keyword arguments; the paper's named configurations are registered as
partials of their family.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Callable

import torch.nn as nn

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str, factory: ModelFactory | None = None):
    """Register ``factory`` under ``name``; usable as ``@register_model("name")`` or called directly."""

    def add(fn: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return add(factory) if factory is not None else add


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs`` (e.g. ``num_classes=100``)."""
    return _factory(name)(**kwargs)


def model_parameters(name: str) -> set[str]:
    """The keyword arguments that model ``name``'s factory accepts."""
    return set(inspect.signature(_factory(name)).parameters)


def _factory(name: str) -> ModelFactory:
    _import_builtin_models()
    if name not in _REGISTRY:
        near = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else "; see `banets models` for the list"
        raise KeyError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern``."""
    _import_builtin_models()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _import_builtin_models() -> None:
    import banets.models  # noqa: F401  (registers the built-in families on import)

