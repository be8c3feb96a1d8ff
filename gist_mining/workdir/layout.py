"""Where everything of a work directory lives: the file and folder names of each step, in chain order, and the
plans that say what made them (read back, and the command that rebuilds a step)."""

from __future__ import annotations

from pathlib import Path

from gist_mining.storage import read_json

TEXTS, ANCHORS, EMBEDDINGS = "texts.parquet", "anchors.parquet", "embeddings"
SKIPPED = "skipped_rows.parquet"  # the input rows --skip-bad-rows left out, and why (gist_mining.bad_rows)
EMBED_PLAN, EMBED_MANIFEST = "embed_plan.json", "embed_manifest.json"
VECTORS, INDEX, CANDIDATES = "vectors", "index", "candidates"
SEARCH_PLAN, CANDIDATES_MANIFEST = "search_plan.json", "candidates_manifest.json"
MINED, MINE_PLAN, MINED_MANIFEST, SUMMARY = "mined", "mine_plan.json", "mined_manifest.json", "mined_summary.json"
# Every text sorted by text_id, with where its UTF-8 bytes are and its vector matrix rows, and the bytes end to end,
# read by the trainer (workdir.TextTable)
TEXT_TABLE, TEXT_BYTES = f"{VECTORS}/texts.npy", f"{VECTORS}/texts-utf8.npy"
TEXT_TABLE_MARKER = f"{VECTORS}/_texts.done"
INDEX_FILE, POOL_IDS, INDEX_MARKER = f"{INDEX}/index.faiss", f"{INDEX}/pool_ids.npy", f"{INDEX}/_index.done"
# pipeline.mask --update-from: the earlier run's lists that each shard asks for, one file per shard (gist_mining.update)
EARLIER, EARLIER_MARKER = f"{INDEX}/earlier", f"{INDEX}/_earlier.done"
REPORT, MODELS, RESULTS = "report", "models", "results.json"
# Known false negatives of the pairs (an input, like them; gist_mining.fn_quality), and their plot in the report.
TRUTH, FN_FRONTIER = "fn_truth.parquet", f"{REPORT}/fn_frontier.png"
# Inside a trained model's folder (train.run --out):
TRAINING_RECORD, METRICS, CHECKPOINTS = "gist_training.json", "metrics.jsonl", "checkpoints"
POSITION, TRAINER_STATE = "position.json", "trainer_state.pt"  # inside each checkpoint
CHECKPOINT_GLOB = "step-*"
LOCK = ".lock"

# What each step owns, in chain order: removing a step removes every later one with it.
STEPS = {
    "embed": (EMBED_PLAN, TEXTS, ANCHORS, SKIPPED, EMBEDDINGS, EMBED_MANIFEST),
    "search": (SEARCH_PLAN, VECTORS, INDEX, CANDIDATES, CANDIDATES_MANIFEST),
    "mine": (MINE_PLAN, MINED, MINED_MANIFEST, SUMMARY, REPORT),
    "train": (MODELS, RESULTS),
}
FOLDERS = (EMBEDDINGS, VECTORS, INDEX, CANDIDATES, MINED)


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"  # zero-padded: names sort by step

def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"

def index_files(work: Path) -> tuple[Path, Path, Path]:
    """The search's index, its pool ids and its marker."""
    return Path(work) / INDEX_FILE, Path(work) / POOL_IDS, Path(work) / INDEX_MARKER

def read_record(path: Path) -> dict | None:
    """A JSON plan, marker or manifest; None when it is missing or cannot be read (cut short by a kill)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None

def read_plan(work: Path, step: str) -> dict | None:
    """The step's plan, or None when there is none or it cannot be read (a run killed while claiming)."""
    path = Path(work) / STEPS[step][0]
    return read_record(path)

def changed_keys(work: Path, step: str, plan, keys) -> list[str]:
    """Which of ``keys`` the step's stored plan holds otherwise than ``plan`` (a workdir.records record)."""
    old, new = read_plan(work, step) or {}, plan.to_json()
    return [k for k in keys if old.get(k) != new.get(k)]

def rebuild_command(work: Path, step: str) -> str:
    if step == "embed":  # the command that made the plan, with its inputs
        return (read_plan(work, "embed") or {}).get("command", f"python -m pipeline.embed --work {work} --input ...")
    return {"search": f"python -m pipeline.mask --work {work} --overwrite",
            "mine": f"python -m pipeline.mask --work {work} --refilter"}[step]
