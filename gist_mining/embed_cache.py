"""Embeddings shared by work directories: a vector the guide computed once is read back, not recomputed.

Layout under the cache root (default ``$GIST_MINING_CACHE/embeddings``, else
``~/.cache/gist-mining/embeddings``)::

    <key>/key.json           what the key stands for: the model fingerprint (weights, tokenizer, configs,
                             revision, forward-pass dtype, max_seq_length, pooling, prompts, dimension), the
                             prompt text actually used, the task encode routes on (document or query
                             with two roles), the backend, the model's name (for people)
    <key>/<sha256>.parquet   text_id i64, embedding fixed_size_list[float32, dim]; named by the SHA-256 of its bytes

``<key>`` hashes everything that changes a vector, so an entry can never serve another model, prompt,
precision, max_seq_length or backend. Entries are keyed by ``text_id`` (a content hash of the text). A file
is written under a temporary name and renamed (``storage.write_bytes_atomic``): readers never see half of
one, and two processes adding the same vectors write the same name with the same bytes. Every read hashes
the bytes it parses: a file that does not match its name is removed and its texts recomputed, never read.

Vectors are stored as the model returns them (L2-normalised, float32; a float16 forward pass's output is
exact in float32); the work directory's ``--dtype`` is applied after, so float16 and float32 work
directories share entries. A file's mtime is its last use (written or read), for ``prune --older-than``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gist_mining.models import cache_dir
from gist_mining.storage import config_fingerprint, read_json, remove_stale_temps, write_bytes_atomic, write_json_atomic
from gist_mining.workdir import shard_arrays

KEY_FILE = "key.json"
KEY_PREFIX = 6  # the shortest key prefix prune --model takes: a short model name ("e5") is not read as a key
FORMAT = 1  # bump when the file layout changes: old entries then simply stop matching


def default_root() -> Path:
    return cache_dir() / "embeddings"


def prompt_used(model_info: dict, prompt: str | None) -> str:
    """The text sentence-transformers prepends: the prompt given, else the model's default prompt, else none ("")."""
    if prompt is not None:
        return prompt
    return (model_info.get("prompts") or {}).get(model_info.get("default_prompt_name")) or ""


class EmbeddingCache:
    """One model configuration's cached vectors (a ``models.model_fingerprint`` dict and a backend), by prompt."""

    def __init__(self, root: Path, model_info: dict, backend: str = "torch"):
        self.root, self.backend = Path(root), backend
        # The run's own prompt and fingerprint are left out: the prompt of each call is keyed instead.
        self.model = {k: v for k, v in model_info.items() if k not in ("fingerprint", "prompt", "name")}
        self.name = model_info.get("name")
        self.hits = self.misses = 0
        self._file_ids: dict[Path, np.ndarray | None] = {}  # verified files' text ids, read once per process

    def key(self, prompt: str | None, task: str | None = None) -> dict:
        """``task``: what encode routes on besides the prompt (a Router module's query or document), if anything."""
        return {"format": FORMAT, "model": self.model, "prompt": prompt_used(self.model, prompt), "task": task,
                "backend": self.backend}

    def vectors(self, ids: np.ndarray, texts: list[str], compute: Callable[[list[str]], np.ndarray],
                prompt: str | None, task: str | None = None) -> np.ndarray:
        """Every text's vector (float32): cached ones read, the others computed (``compute``: the model's
        encode with this prompt and task) in input order and added."""
        key, ids = self.key(prompt, task), np.asarray(ids, dtype=np.int64)
        folder = self.root / config_fingerprint(key)[:32]
        out = np.empty((len(ids), self.model["dimension"]), dtype=np.float32)
        found = self._read_into(folder, ids, out)
        missing = np.flatnonzero(~found)
        if len(missing):
            out[missing] = compute([texts[i] for i in missing])
            self._add(folder, key, ids[missing], out[missing])
        self.hits, self.misses = self.hits + int(found.sum()), self.misses + len(missing)
        return out

    def _read_into(self, folder: Path, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        found = np.zeros(len(ids), dtype=bool)
        for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
            if found.all():
                break
            data = None
            if path not in self._file_ids:
                data = _verified(path)
                self._file_ids[path] = None if data is None else pl.read_parquet(data, columns=["text_id"])[
                    "text_id"].to_numpy()
            file_ids = self._file_ids[path]
            if file_ids is None or not np.isin(ids[~found], file_ids).any():
                continue
            if data is None:  # seen by an earlier call: read and hashed again (the file may have changed meanwhile)
                data = _verified(path)
                if data is None:
                    self._file_ids[path] = None
                    continue
            file_ids, vectors = shard_arrays(pl.read_parquet(data))
            order = np.argsort(file_ids)
            at = np.minimum(np.searchsorted(file_ids, ids, sorter=order), len(file_ids) - 1)
            take = ~found & (file_ids[order[at]] == ids)
            out[take] = vectors[order[at[take]]]
            found |= take
            _touch(path)
        return found

    def _add(self, folder: Path, key: dict, ids: np.ndarray, vectors: np.ndarray) -> None:
        """One new file; a cache that cannot be written (read-only, full) costs this run nothing but a warning."""
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), vectors.shape[1])
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"text_id": pa.array(ids, type=pa.int64()), "embedding": column}), sink,
                       compression="none", use_dictionary=False)
        data = sink.getvalue()  # Arrow's buffer itself: a copy as bytes would add the shard's size to the peak
        try:
            write_json_atomic({**key, "name": self.name}, folder / KEY_FILE)
            write_bytes_atomic(data, folder / f"{hashlib.sha256(data).hexdigest()}.parquet")
        except OSError as err:
            print(f"embed cache: cannot add to {folder} ({err}); continuing without", file=sys.stderr)


def _verified(path: Path) -> bytes | None:
    """The file's bytes when they hash to its name; a corrupt file is removed (None), a vanished one too."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # pruned meanwhile
        return None
    if hashlib.sha256(data).hexdigest() != path.stem:
        print(f"embed cache: {path} is corrupt (SHA-256 differs from its name); removed, its texts are recomputed",
              file=sys.stderr)
        path.unlink(missing_ok=True)
        return None
    return data


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:  # pruned meanwhile, or a read-only shared cache
        pass


# -- inspection and pruning (python -m pipeline.cache) ---------------------------------------------------


def folders(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")) if Path(root).is_dir() else []


def describe(folder: Path) -> dict:
    """What a key folder holds, from its key.json and the files' Parquet footers (no hashing)."""
    key = read_json(folder / KEY_FILE) if (folder / KEY_FILE).is_file() else {}
    files = sorted(folder.glob("*.parquet"))
    entries, unreadable = 0, 0
    for path in files:
        try:
            entries += pq.read_metadata(path).num_rows
        except (OSError, pa.ArrowException):
            unreadable += 1
    model = key.get("model", {})
    return {"key": folder.name, "name": key.get("name"), "prompt": key.get("prompt"), "backend": key.get("backend"),
            "precision": model.get("precision"), "max_seq_length": model.get("max_seq_length"), "files": len(files),
            "entries": entries, "unreadable": unreadable, "bytes": sum(p.stat().st_size for p in files),
            "last_used": max((p.stat().st_mtime for p in files), default=None)}


def is_key_prefix(name: str, key: str) -> bool:
    return len(name) >= KEY_PREFIX and key.startswith(name)


def unused_before(older_than_days: float | None) -> float | None:
    """The time before which a last use makes a file (or an export) unused for ``older_than_days``; None: no age."""
    return time.time() - older_than_days * 86400 if older_than_days is not None else None


def prune(root: Path, *, everything: bool = False, older_than_days: float | None = None,
          model: str | None = None) -> tuple[int, int]:
    """Remove cache files: all, those unused for ``older_than_days``, or a model's (its name or key prefix).
    Returns (files, bytes) removed; key folders left empty go too."""
    cutoff = unused_before(older_than_days)
    removed = [0, 0]
    for folder in folders(root):
        remove_stale_temps(folder)
        info = describe(folder)
        if model is not None and model != info["name"] and not is_key_prefix(model, folder.name):
            continue
        for path in folder.glob("*.parquet"):
            size, mtime = path.stat().st_size, path.stat().st_mtime
            if everything or model is not None or (cutoff is not None and mtime < cutoff):
                path.unlink(missing_ok=True)
                removed[0], removed[1] = removed[0] + 1, removed[1] + size
        if not any(folder.glob("*.parquet")):
            (folder / KEY_FILE).unlink(missing_ok=True)
            try:
                folder.rmdir()
            except OSError:  # a live process is writing into it
                pass
    return removed[0], removed[1]
