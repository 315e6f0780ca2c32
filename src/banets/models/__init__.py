"""Built-in model families; importing this package registers them (see ``registry``)."""

from banets.models import (
    cnn_lstm,  # noqa: F401
    densenet,  # noqa: F401
    gpt_lm,  # noqa: F401
    lstm_lm,  # noqa: F401
    preresnet,  # noqa: F401
    resnet_cifar,  # noqa: F401
    small,  # noqa: F401  (each import registers a family)
    students,  # noqa: F401
    text_classifier,  # noqa: F401
    wide_resnet,  # noqa: F401
)
from banets.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
