"""Stage 3 as a library: ``train`` (the loop) and ``TrainConfig`` (its settings); ``python -m train.run`` is its
command line."""

from gist_mining.training.config import TrainConfig
from gist_mining.training.loop import train

__all__ = ["TrainConfig", "train"]
