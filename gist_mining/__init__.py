"""gist-mining: offline guide-model mining of hard negatives and false-negative masks, and a GISTEmbed trainer."""

__version__ = "0.1.0"
