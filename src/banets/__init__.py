"""banets: Born Again Neural Networks (Furlanello et al., ICML 2018) as a library.

The public API: ``born_again`` trains a teacher and its born-again generations on your model and data (or
``banets run`` on a preset: the same path); ``load`` returns a trained model from an output folder;
``create_model``, ``list_models`` and ``register_model`` reach the model registry; ``BornAgainConfig`` and
``TrainConfig`` are the plan and the training recipe; ``losses.register`` adds a loss by name.
"""

from banets.config import BornAgainConfig, DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from banets.experiment import BornAgainRun, born_again, load
from banets.models.registry import create_model, list_models, register_model

__version__ = "0.2.0"

__all__ = [
    "born_again", "BornAgainRun", "load", "create_model", "list_models", "register_model",
    "BornAgainConfig", "TrainConfig", "DataConfig", "ModelConfig", "ExperimentConfig", "__version__",
]
