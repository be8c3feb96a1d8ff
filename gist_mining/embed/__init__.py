"""Stage 1 as a library: ``embed`` and its settings; ``python -m pipeline.embed`` is its command line."""

from gist_mining.embed.settings import EmbedOptions, InputOptions
from gist_mining.embed.stage import embed

__all__ = ["EmbedOptions", "InputOptions", "embed"]
