"""``MiningRules``: which of an anchor's candidates are false negatives, and which become its hard negatives; the
mining stage's options (``pipeline.mask``) and its mined/ fingerprint."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from gist_mining import given_negatives
from gist_mining.margin import STRATEGIES
from gist_mining.mining.schemas import SCORES
from gist_mining.settings import option


@dataclass(frozen=True)
class MiningRules:
    """Which of an anchor's candidates are false negatives, and which become its hard negatives (``select``)."""

    margin_strategy: str = option("relative", "the mining margin rule: a candidate is a false negative above the "
                                              "positive's score less margin x |score| (relative), less margin "
                                              "(absolute), or never (none)", choices=STRATEGIES)
    margin: float = option(0.05, "the mining margin rule's margin")
    min_score: float | None = option(None, "drop candidates below this (too easy)", type=float)
    max_score: float | None = option(None, "flag candidates above this as false negatives", type=float)
    rank_min: int = option(0, "skip this many top surviving candidates")
    # Stored as num_negatives in mined manifests; one option name with the trainer's (its part of them).
    num_negatives: int = option(3, "hard negatives mined per anchor (given negatives the guide keeps count first)",
                                flag="--negatives-per-anchor")
    sampling: str = option("top", "which survivors become negatives: the highest scored, or a seeded random draw",
                           choices=("top", "random"))
    seed: int = option(42, "seed of every random draw of the stage (here: --sampling random)")
    # For anchors the guide cannot judge (is_unjudged): None keeps the margin rule, which flags nearly all of
    # their candidates; R turns it off for them and takes their negatives after their first R candidates.
    unjudged_rank_min: int | None = option(None, "anchors the guide cannot judge (positive below most candidates): "
                                                 "no margin rule, skip this many top candidates instead "
                                                 "(default: the margin rule for all)", type=int)
    # Whose scores the rules read: the guide's, or the cross-encoder's (which also re-ranks the candidates).
    score: str = option("guide", "scores the rules read: the guide's, or --rescore-model's (which re-ranks the "
                                 "candidates)", choices=SCORES)
    # given: GISTEmbed's own setting, no pool search (gist_mining.given_negatives).
    negatives_from: str = option("corpus", "where hard negatives come from: the given negatives and the pool's nearest "
                                           "texts (corpus), or the given negatives alone, each judged by the guide, "
                                           "no search (given: as the GIST models were trained)",
                                 choices=given_negatives.SOURCES)

    def __post_init__(self):
        if self.margin_strategy not in STRATEGIES:
            raise ValueError(f"margin strategy must be one of {', '.join(STRATEGIES)}")
        if self.sampling not in ("top", "random"):
            raise ValueError("sampling must be 'top' or 'random'")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}")
        if self.negatives_from not in given_negatives.SOURCES:
            raise ValueError(f"negatives_from must be one of {', '.join(given_negatives.SOURCES)}")
        if self.rank_min < 0 or self.num_negatives < 0 or (self.unjudged_rank_min or 0) < 0:
            raise ValueError("rank_min, unjudged_rank_min and num_negatives must be >= 0")

    def described(self) -> str:
        """The rules as a log line reads them: each set one, by name."""
        return ", ".join(f"{k} {v}" for k, v in sorted(self.as_dict().items()) if v is not None)

    def as_dict(self) -> dict:
        rules = asdict(self)
        if self.negatives_from == "corpus":  # the default leaves out: mined/ made before it existed stays current
            del rules["negatives_from"]
        return rules
