"""Training of multi-attribute binary classifiers (unbalanced, balanced, MOON weighting)."""

from bincam.training.config import TrainConfig
from bincam.training.weights import WEIGHTINGS, class_weights

__all__ = ["TrainConfig", "WEIGHTINGS", "class_weights", "train"]


def __getattr__(name):
    if name == "train":
        from bincam.training.loop import train

        return train
    raise AttributeError(name)
