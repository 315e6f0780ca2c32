"""Built-in model families; importing this package registers them (see ``registry``)."""

from banets.models.registry import create_model, list_models, register_model
from banets.models import small  # noqa: F401  (each import registers a family)
from banets.models import densenet  # noqa: F401
from banets.models import wide_resnet  # noqa: F401
from banets.models import preresnet  # noqa: F401
from banets.models import resnet_cifar  # noqa: F401
from banets.models import students  # noqa: F401
from banets.models import lstm_lm  # noqa: F401
from banets.models import cnn_lstm  # noqa: F401

__all__ = ["create_model", "list_models", "register_model"]
