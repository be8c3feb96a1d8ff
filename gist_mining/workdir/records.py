"""The records a stage writes about itself, typed and frozen: its plan (what a run makes, with the fingerprint
every resume and reader compares) and, once every shard is done, its manifest (the plan's fields with the shards'
file records). JSON in and out in one place: ``to_json`` is what the file holds, ``from_json`` reads one back
(keys a record does not name are left out; fields older files lack take their defaults). Fingerprints are
computed by the stages from what made the record, never from these objects, so typing them changed none."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from gist_mining.mining.rules import MiningRules


@dataclass(frozen=True, kw_only=True)
class JsonRecord:
    @classmethod
    def from_json(cls, data: dict):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class Record(JsonRecord):
    fingerprint: str


@dataclass(frozen=True, kw_only=True)
class Sharded(Record):
    """A finished step: each shard's file record (file, rows, bytes, sha256), checked before it is read."""

    shards: list[dict]


@dataclass(frozen=True, kw_only=True)
class EmbedRecord(Record):
    model: dict  # the guide: name, fingerprint, dimension
    settings: dict  # gist_mining.embed.settings.EmbedSettings' fields
    inputs: list[dict]  # each input file: kind, path, sha256
    command: str
    dimension: int
    dtype: str
    counts: dict[str, int]
    tables: dict[str, dict] = field(default_factory=dict)  # texts.parquet and anchors.parquet: their file records


@dataclass(frozen=True, kw_only=True)
class EmbedPlan(EmbedRecord):
    bounds: list[list[int]]  # each shard's texts: [start, stop)


@dataclass(frozen=True, kw_only=True)
class EmbedManifest(EmbedRecord, Sharded):
    pass


@dataclass(frozen=True, kw_only=True)
class SearchPlan(Record):
    """gist_mining.mask.settings.SearchSettings' fields (index resolved to a kind), and what the search depends on."""

    k: int
    index: str
    memory_budget: str | None
    include_queries: bool
    shard_size: int
    pool_slice_size: int | None
    pool_slices: int | None
    n_anchors: int
    parent_fingerprint: str  # the embeddings'
    rescore: dict | None  # the cross-encoder's record, when candidates carry its scores
    candidates_format: int = 1
    update_from: dict | None = None  # the earlier run: work and its search's fingerprint
    command: str = ""
    pool_search: bool = True  # False: no pool was searched (--negatives-from given); written only then

    def to_json(self) -> dict:
        out = super().to_json()
        if self.pool_search:  # left out at its default: plans made before it existed stay equal
            del out["pool_search"]
        return out

    @property
    def anchor_shards(self) -> int:
        """How many shards candidates/ and mined/ have: the anchors in shards of the shard size."""
        return -(-self.n_anchors // self.shard_size)


@dataclass(frozen=True, kw_only=True)
class CandidatesManifest(SearchPlan, Sharded):
    pass


@dataclass(frozen=True, kw_only=True)
class MinePlan(Record):
    rules: MiningRules  # read back from JSON here, the one place
    parent_fingerprint: str  # the search's

    @classmethod
    def from_json(cls, data: dict):
        return super().from_json({**data, "rules": MiningRules(**data["rules"])})

    def to_json(self) -> dict:
        return {**super().to_json(), "rules": self.rules.as_dict()}


@dataclass(frozen=True, kw_only=True)
class MinedManifest(MinePlan, Sharded):
    embed_fingerprint: str
    score: str = "guide"  # whose scores the rules read
    rescore_model: str | None = None



@dataclass(frozen=True, kw_only=True)
class TrainingRecord(JsonRecord):
    """gist_training.json, written last beside a trained model: what it was trained from and how."""

    settings: dict  # gist_mining.training.config.TrainConfig's record, with work and out
    identity: dict | None = None  # what a rerun must share to find the run done (training.checkpoints.run_identity)
    steps: int
    world_size: int
    mined_fingerprint: str
    embed_fingerprint: str
    mining_rules: MiningRules
    eval_before: dict | None = None
    eval_after: dict | None = None

    @classmethod
    def from_json(cls, data: dict):
        return super().from_json({**data, "mining_rules": MiningRules(**data["mining_rules"])})

    def to_json(self) -> dict:
        return {**super().to_json(), "mining_rules": self.mining_rules.as_dict()}
