"""The guide's forward pass in ONNX Runtime on CPU: exported once per model, checked against torch, then reused.

The graph is the model's own sentence-transformers modules (Transformer, Pooling with mean, CLS or
last-token, and a Normalize module when the model has one) traced by ``torch.onnx.export`` with dynamic
batch and sequence axes; tokenization stays sentence-transformers' own (``model.preprocess``), so both
backends see the same token ids. The export is written once into the user cache under a key made of the
model's fingerprint and the exporter's version, built in a temporary folder and renamed into place
(``models.build_folder_once``), and used only if its vectors agree with ``SentenceTransformer.encode`` within
``TOLERANCE`` on ``CHECK_TEXTS``. The weights are stored beside the graph (``DATA_FILE``), which ONNX Runtime
maps into memory instead of parsing a copy of them out of the graph and copying them again into tensors.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gist_mining.embed_cache import is_key_prefix, unused_before
from gist_mining.errors import UsageError
from gist_mining.models import build_folder_once, cache_dir, model_fingerprint
from gist_mining.storage import read_json

BACKENDS = ("auto", "torch", "onnx")
TOLERANCE = 1e-4  # largest absolute difference from the torch path, per vector component, that an export may show
TOKEN_BUDGET = 2048  # a batch's padded tokens (rows x its longest text) stay within this, besides --batch-size
# Beyond this many tokens a row's attention scores (heads x L^2) outgrow its feed-forward activations (L x 4 x
# hidden; equal at L = 4 x hidden / heads, 256 for mpnet and BERT-base), so longer batches are cut by L^2 too.
ATTENTION_LENGTH = 256
OPSET = 17
POOLING_MODES = ("mean", "cls", "lasttoken")
GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
GRAPH_FILE, DATA_FILE, RECORD_FILE = "model.onnx", "model.onnx.data", "export.json"
EXPORT_FORMAT = 2  # 2: weights in DATA_FILE (1: inside the graph, parsed and copied at every load)
CHECK_TEXTS = [
    "a", "The bank raised its interest rates.", "the river bank was muddy after the rain",
    "def read(path): return open(path).read()", "provide with a new lining", "azotic, nitric, nitrous",
    "Return a randomly selected element from range(start, stop, step).",
    "of or containing nitrogen; especially with a valence of five", "the old fur coat must be relined",
    "Numbers 3.14159 and 2718, punctuation (!?), and UPPER case.", "café naïve résumé",
    " ".join(["a long text that is truncated at the model's maximum sequence length"] * 60),
]


class Unavailable(Exception):
    """Why the ONNX backend cannot serve this model or run, in one line."""


def unsupported(model, prompts: list[str], precision: str) -> str | None:
    """Why this model or run cannot use the ONNX backend, or None when it can be exported."""
    kinds = [type(module).__name__ for module in model]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return f"module stack {' -> '.join(kinds)} is not Transformer -> Pooling [-> Normalize]"
    mode = model[1].pooling_mode
    if mode not in POOLING_MODES:
        return f"pooling {mode!r} is not one of {', '.join(POOLING_MODES)}"
    if any(prompts) and not model[1].include_prompt:
        return "its pooling leaves the prompt's tokens out, which the graph cannot know"
    if precision != "fp32" or model.device.type != "cpu":
        return f"it runs on CPU in fp32 (this run: {model.device.type}, {precision})"
    for package in ("onnxruntime", "onnx"):
        try:
            metadata.version(package)
        except metadata.PackageNotFoundError:
            return f"{package} is not installed (pip install {package})"
    return None


def check(expected: np.ndarray, got: np.ndarray, tolerance: float = TOLERANCE) -> float:
    """The largest absolute difference between the two backends' vectors; Unavailable above ``tolerance``."""
    difference = float(np.abs(expected - got).max())
    if not difference <= tolerance:  # a NaN is refused too
        raise Unavailable(f"the ONNX export differs from the torch forward pass by {difference:.2e} (largest "
                          f"absolute difference over {len(expected)} check texts), above {tolerance:.0e}; not used")
    return difference


class OnnxEncoder:
    """An ONNX Runtime session over an exported graph, with the model for tokenization only."""

    def __init__(self, model, graph: Path, token_budget: int = TOKEN_BUDGET):
        import onnxruntime as ort
        import torch

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # every core torch would use; ORT's default is fewer
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Built on a thread of its own (ONNX Runtime lets go of the GIL), since prepacking a base model's weights
        # takes ~0.3 s that the stage's planning, fingerprinting and tokenizing meanwhile cover.
        builder = ThreadPoolExecutor(1)
        self.building = builder.submit(ort.InferenceSession, str(graph), options, providers=["CPUExecutionProvider"])
        builder.shutdown(wait=False)
        self.graph = graph
        # The last batch of an encode call hands the arena's free memory back, so that what follows (writing the
        # shard) does not stack on top of the activations of the longest batch, which come first.
        self.release = ort.RunOptions()
        self.release.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.model, self.token_budget = model, token_budget
        self.dimension = model.get_embedding_dimension()

    @functools.cached_property
    def session(self):
        try:
            return self.building.result()
        except Exception as err:  # a damaged export (its files changed since the check), or an onnxruntime that refuses it
            raise UsageError(f"ONNX Runtime cannot load the export {self.graph.parent}: {type(err).__name__}: "
                             f"{str(err).splitlines()[0][:200]}; remove it with `python -m pipeline.cache prune --model "
                             f"{self.graph.parent.name}` (the next run exports again) or pass --backend torch") from None

    @functools.cached_property
    def inputs(self) -> list[str]:
        return [node.name for node in self.session.get_inputs()]

    def token_lengths(self, texts: list[str], prompt: str | None) -> np.ndarray:
        prompted = [prompt + text for text in texts] if prompt else texts
        ids = self.model.tokenizer(prompted, truncation=True, max_length=self.model.max_seq_length,
                                   return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        return np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))

    def encode(self, texts: list[str], batch_size: int, prompt: str | None) -> np.ndarray:
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        batches = token_batches(self.token_lengths(texts, prompt), batch_size, self.token_budget)
        for n, rows in enumerate(tqdm(batches, desc="Batches", disable=len(batches) < 2)):
            features = self.model.preprocess([texts[i] for i in rows], prompt=prompt)
            vectors[rows] = self.session.run(None, {name: features[name].numpy() for name in self.inputs},
                                             self.release if n == len(batches) - 1 else None)[0]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


def encode(encoder: OnnxEncoder, texts: list[str], batch_size: int, prompt: str | None, task: str | None = None) -> np.ndarray:
    """``gist_mining.embed.step.encode`` for the ONNX backend: L2-normalised float32 vectors in the order of texts. ``task``
    routes a Router module, which the ONNX backend never serves (``unsupported``), so it changes nothing here."""
    return encoder.encode(texts, batch_size, prompt)


def token_batches(lengths: np.ndarray, batch_size: int, token_budget: int) -> list[np.ndarray]:
    """Row indices, longest texts first, cut into batches of at most ``batch_size`` rows whose padded size
    (rows x the batch's longest text L) stays within ``token_budget``, and within ``token_budget x
    ATTENTION_LENGTH / L`` when L is longer than ``ATTENTION_LENGTH`` (the attention scores grow with rows x
    L^2); a text longer than the budget goes alone."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, min(batch_size, token_budget * ATTENTION_LENGTH // (longest * max(longest, ATTENTION_LENGTH))))
        batches.append(order[start:start + rows])
        start += rows
    return batches


def export_key(model, model_dir: Path) -> str:
    """The model's fingerprint without the run's prompt, and the exporter's version."""
    import torch

    info = {k: v for k, v in model_fingerprint(model, model_dir).items() if k not in ("prompt", "fingerprint")}
    info.update(torch=torch.__version__, opset=OPSET, format=EXPORT_FORMAT)
    return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:24]


def export(model, model_dir: Path, name: str, folder: Path) -> Path:
    """Trace the model's modules into ``folder/model.onnx`` (weights in ``folder/model.onnx.data``) and check it;
    ``folder/export.json`` records the check, the format, the model's folder and the name it was asked for by."""
    import onnx
    import torch

    features = model.preprocess(CHECK_TEXTS)
    names = [name for name in GRAPH_INPUTS if name in features]

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model(dict(zip(names, tensors)))["sentence_embedding"]

    folder.mkdir()
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    started = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer warnings
        torch.onnx.export(Graph().eval(), tuple(features[name] for name in names), str(folder / "traced.onnx"),
                          dynamo=False, input_names=names, output_names=["sentence_embedding"],
                          dynamic_axes={**axes, "sentence_embedding": {0: "batch"}}, opset_version=OPSET)
    onnx.save_model(onnx.load(str(folder / "traced.onnx")), str(folder / GRAPH_FILE), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)
    (folder / "traced.onnx").unlink()
    expected = model.encode(CHECK_TEXTS, batch_size=4, normalize_embeddings=True, convert_to_numpy=True)
    difference = check(expected, OnnxEncoder(model, folder / GRAPH_FILE, token_budget=256).encode(CHECK_TEXTS, 4, None))
    (folder / RECORD_FILE).write_text(json.dumps({"max_difference": difference, "texts": len(CHECK_TEXTS),
                                                  "seconds": round(time.perf_counter() - started, 1),
                                                  "format": EXPORT_FORMAT, "model": str(model_dir), "name": name}))
    return folder


def load(model, model_dir: Path, token_budget: int = TOKEN_BUDGET, name: str | None = None) -> OnnxEncoder:
    """The model's ONNX encoder, exported and checked the first time (Unavailable when it fails the check)."""
    target = exports_root() / export_key(model, model_dir)
    fresh = not (target / RECORD_FILE).exists()
    try:
        build_folder_once(target, lambda tmp: export(model, model_dir, name or str(model_dir), tmp / "out"), RECORD_FILE)
    except Unavailable:
        raise
    except Exception as err:  # the tracer's failures are many and version-dependent
        raise Unavailable(f"torch.onnx.export failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
    if fresh:
        record = read_json(target / RECORD_FILE)
        print(f"embed: exported the model to ONNX once, in {record['seconds']}s, into {target}; largest difference "
              f"from torch {record['max_difference']:.1e} on {record['texts']} check texts", file=sys.stderr)
    with contextlib.suppress(OSError):  # a cache shared read-only still serves
        os.utime(target / RECORD_FILE)  # the record's mtime is the export's last use, for prune --older-than
    return OnnxEncoder(model, target / GRAPH_FILE, token_budget)


# -- the exports in the user cache: listed and pruned by pipeline.cache -----------------------------------


def exports_root() -> Path:
    return cache_dir() / "onnx"


def describe_exports() -> list[dict]:
    """Every export folder: key, the model folder and name of the run that exported it, format, bytes, last use,
    and whether it is outdated: of an older format (no run of this version or a later one reaches it) or without
    its record (damaged: the next run of its model exports again in its place)."""
    rows = []
    for folder in sorted(exports_root().glob("[!.]*")):  # dot folders: builds in progress (models.build_folder_once)
        record_file = folder / RECORD_FILE
        try:
            record = read_json(record_file)
        except (OSError, ValueError):  # missing, or damaged (a run still uses it: it only looks for the file)
            record = {}
        # Records written before they named their format: format 2 is the one with the weights beside the graph.
        form = record.get("format", 2 if (folder / DATA_FILE).exists() else 1)
        rows.append({"key": folder.name, "name": record.get("name"), "model": record.get("model"), "format": form,
                     "outdated": form < EXPORT_FORMAT or not record_file.exists(),
                     "bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()),
                     "last_used": record_file.stat().st_mtime if record_file.exists() else None})
    return rows


def names_model(row: dict, name: str) -> bool:
    """Whether ``name`` (as given to --model: the name of the run that exported it, the model's folder, or a key
    prefix of KEY_PREFIX characters or more) is this export's."""
    return name == row["name"] or is_key_prefix(name, row["key"]) or (
        row["model"] is not None and str(Path(name).expanduser().resolve()) == row["model"])


def prune_exports(*, everything: bool = False, older_than_days: float | None = None,
                  model: str | None = None) -> tuple[int, int, int]:
    """Remove exports: all, those unused for ``older_than_days``, or a model's; outdated ones always. Returns
    (exports, bytes) removed and how many could not be (a read-only cache)."""
    cutoff = unused_before(older_than_days)
    removed, size, failed = 0, 0, 0
    for row in describe_exports():
        stale = cutoff is not None and (row["last_used"] is None or row["last_used"] < cutoff)
        if everything or row["outdated"] or stale or (model is not None and names_model(row, model)):
            shutil.rmtree(exports_root() / row["key"], ignore_errors=True)
            if (exports_root() / row["key"]).exists():
                failed += 1
            else:
                removed, size = removed + 1, size + row["bytes"]
    return removed, size, failed


def pick_backend(requested: str, model, model_dir: Path, prompts: list[str], precision: str,
           token_budget: int = TOKEN_BUDGET, name: str | None = None) -> tuple[str, object]:
    """The backend a run uses and what encodes for it: ("onnx", OnnxEncoder) or ("torch", the model).

    ``auto`` takes ONNX whenever it is available and says why not otherwise; ``onnx`` refuses when it is not.
    With ONNX, the model's weights go to the ``meta`` device (the session holds its own copy; the model stays
    for its tokenizer, configuration and fingerprint). ``name``: what the user called the model, for
    ``pipeline.cache``.
    """
    if requested == "torch":
        return "torch", model
    try:
        reason = unsupported(model, prompts, precision)
        if reason is not None:
            raise Unavailable(f"the ONNX backend cannot serve this model: {reason}")
        encoder = load(model, model_dir, token_budget, name)
        model.to("meta")
        return "onnx", encoder
    except Unavailable as err:
        if requested == "onnx":
            raise UsageError(f"--backend onnx: {err}") from None
        print(f"embed: backend torch ({err})", file=sys.stderr)
        return "torch", model
