"""Stage 2 as a library: ``mask`` and its search settings; ``python -m pipeline.mask`` is its command line."""

from gist_mining.mask.settings import SearchSettings
from gist_mining.mask.stage import mask, run_mask

__all__ = ["SearchSettings", "mask", "run_mask"]
