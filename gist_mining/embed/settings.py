"""The embed stage's settings: how it runs (``EmbedOptions``), how it reads its inputs (``InputOptions``), and what of
them changes the vectors (``EmbedSettings``, in the plan). Their fields generate pipeline.embed's options."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from gist_mining import onnx_backend
from gist_mining.inputs import HubSelection, medi
from gist_mining.settings import option


@dataclass(frozen=True)
class EmbedOptions:
    """How the embed stage runs besides its inputs, guide and prompts. What changes the vectors goes into the
    plan (``EmbedSettings``); the rest changes only how fast they come."""

    precision: str = option("fp32", "forward-pass dtype", choices=("fp32", "fp16", "bf16"))
    dtype: str = option("float32", "stored embedding dtype", choices=("float32", "float16"))
    texts_per_shard: int = option(50_000, "texts per embedding shard")
    # auto: onnx on CPU when onnxruntime is installed and the model exports (gist_mining.onnx_backend), else torch.
    # The plan stores the backend used: the two agree within 1e-4 but not bit for bit (about 1e-7).
    backend: str = option("auto", "forward pass: torch, onnx (ONNX Runtime on CPU), or auto: onnx when it serves "
                                  "the model on CPU", choices=onnx_backend.BACKENDS)
    encode_batch_size: int = option(64, "texts per forward pass")
    token_budget: int = option(onnx_backend.TOKEN_BUDGET, "onnx: a batch's padded tokens (rows x longest text) stay "
                                                          "within this, besides --encode-batch-size")
    cache_dir: Path | None = option(None, "embedding cache shared by work directories (default: "
                                          "$GIST_MINING_CACHE/embeddings, else ~/.cache/gist-mining/embeddings)",
                                    type=Path)
    no_cache: bool = option(False, "neither read nor add to the embedding cache")
    overwrite: bool = option(False, "discard a work directory made differently (and everything made from it)")


@dataclass(frozen=True)
class InputOptions:
    """How the inputs are read: which columns are what, which part of a Hub dataset, a retrieval layout."""

    columns: str | None = option(None, "which columns are what, e.g. query=question,positive=answer,"
                                       "negative=hard_negative,task=source,text=body (default: recognised, as "
                                       "sentence-transformers names them)", type=str, metavar="SLOT=COLUMN,...")
    input_split: str = option(HubSelection.split, "split of Hub dataset inputs")
    input_subset: str | None = option(None, "subset (config) of Hub dataset inputs", type=str)
    input_revision: str | None = option(None, "branch, tag or commit of Hub dataset inputs", type=str)
    queries: Path | None = option(None, "BEIR queries (_id, text), with one --corpus and --qrels", type=Path)
    qrels: Path | None = option(None, "BEIR qrels (query-id, corpus-id, score): each qrel scoring above 0 is a pair",
                                type=Path)
    instructions: str = option(medi.MODES[0], "MEDI-style instructions (query_instruct columns, [instruction, text] "
                                              "pairs): dropped, as the GIST models were trained, or prepended to "
                                              "their texts", choices=medi.MODES)
    skip_bad_rows: bool = option(False, "leave out input rows that fail a check (a blank or null text, a positive "
                                        "equal to its query, a bad negative), listed with the reason in the work "
                                        "directory's skipped_rows.parquet, instead of stopping at them")

    def hub(self) -> HubSelection:
        return HubSelection(split=self.input_split, subset=self.input_subset, revision=self.input_revision)


@dataclass(frozen=True)
class EmbedSettings:
    """Everything besides the model and the inputs that changes what the embed stage writes: its plan's
    ``settings`` (the prompts and backend as resolved for the guide)."""

    dtype: str
    precision: str
    shard_size: int  # texts per shard (--texts-per-shard)
    query_prompt: str
    document_prompt: str
    backend: str

    def as_dict(self) -> dict:
        return asdict(self)
