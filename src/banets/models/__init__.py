"""Built-in model families; importing this package registers them (see ``registry``)."""

from banets.models.registry import create_model, list_models, register_model
from banets.models import mlp  # noqa: F401  (each import registers a family)

__all__ = ["create_model", "list_models", "register_model"]
