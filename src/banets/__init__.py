"""banets: Born Again Neural Networks (Furlanello et al., ICML 2018) as a library.

The public API: ``born_again`` trains a teacher and its born-again generations; ``create_model`` and
``list_models`` reach the model registry; ``TrainConfig`` sets the training recipe.
"""

from banets.engine import TrainConfig
from banets.ensemble import Ensemble
from banets.generations import BornAgainResult, born_again
from banets.models.registry import create_model, list_models

__all__ = ["born_again", "BornAgainResult", "create_model", "list_models", "Ensemble", "TrainConfig"]
