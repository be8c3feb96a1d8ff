"""Score models on suites into one table: a row per (model, suite, task), a column per metric (``METRICS`` and
``main_score``), written to ``OUT/results.parquet``, ``OUT/results.md`` and a bar chart ``OUT/results.png``.

Each finished (model, suite, task) result is kept under ``OUT/results/`` (the sentence-transformers suites) or in
mteb's ResultCache under ``OUT/mteb/``, keyed by the model's fingerprint (weights, tokenizer, configs, prompts)
and the task's data, so a rerun scores only what is missing: a retrained model is a new fingerprint, a changed
split a new key."""

from __future__ import annotations

import io
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from tqdm import tqdm

from gist_mining.errors import UsageError
from gist_mining.evaluation.suites import MAIN_SCORE, METRICS, MTEB, digest
from gist_mining.models import ModelSettings, Prompts, model_fingerprint, resolve_model, role_prompts
from gist_mining.storage import read_json, write_bytes_atomic, write_json_atomic, write_parquet_atomic

TABLE, MARKDOWN, CHART, STORE, MTEB_CACHE = "results.parquet", "results.md", "results.png", "results", "mteb"
SCHEMA = {"model": pl.String, "suite": pl.String, "task": pl.String, **{m: pl.Float64 for m in (*METRICS, MAIN_SCORE)}}


@dataclass(frozen=True)
class ModelOptions:
    """How every model of an evaluation is loaded and prompted: ModelSettings less its name (its options set
    them: ``settings.from_args(ModelOptions, parsed)``), and the prompts."""

    revision: str | None = None
    trust_remote_code: bool = False
    device: str | None = None
    max_seq_length: int | None = None
    prompts: Prompts = field(default_factory=Prompts)

    def settings(self, name: str) -> ModelSettings:
        return ModelSettings(name, self.revision, self.trust_remote_code, self.device, self.max_seq_length)


def load(name: str, options: ModelOptions):
    """The model, or one line saying why it does not load."""
    try:
        return options.settings(name).load()
    except UsageError:
        raise
    except Exception as err:  # a damaged folder: unreadable weights, a broken config
        first = next(iter(str(err).splitlines()), "")
        raise UsageError(f"model {name!r} does not load ({type(err).__name__}: {first})") from None


def evaluate(models: list[str] | dict[str, str], suites: list, out: Path, options: ModelOptions = ModelOptions(),
             quiet: bool = False) -> pl.DataFrame:
    """Score each model (a bundled name, a folder, a Hub id; a dict gives each a label for the table) on each
    suite (``gist_mining.evaluation.suites``), reusing the finished results under ``out``; the table, also written
    to ``out``. Every model is located before any is scored, so a bad name stops the run with nothing written."""
    out = Path(out)
    named = dict(models) if isinstance(models, dict) else {m: m for m in models}
    paths = {label: resolve_model(name, options.revision) for label, name in named.items()}
    rows = []
    try:
        for label, name in tqdm(named.items(), desc="models", disable=quiet or len(named) < 2):
            model = load(name, options)
            prompts = None if options.prompts == Prompts() else role_prompts(model, options.prompts)
            identity = digest(model_fingerprint(model, paths[label])["fingerprint"], role_prompts(model, options.prompts))
            for suite in suites:
                scores = _scores(suite, model, prompts, identity, out)
                rows += [{"model": label, "suite": suite.name, "task": task, **scores[task]} for task in suite.tasks]
    except BaseException:
        _remove_empty_folders(out)  # what a failed run leaves is only the finished results it kept
        raise
    table = pl.DataFrame(rows, schema=SCHEMA)
    write_table(table, out)
    return table


def _scores(suite, model, prompts: dict | None, identity: str, out: Path) -> dict[str, dict]:
    if isinstance(suite, MTEB):
        return suite.score(model, suite.tasks, prompts, cache=out / MTEB_CACHE, identity=identity)
    kept = {task: out / STORE / identity[:16] / suite.name / f"{_file_name(task)}-{suite.key(task)[:16]}.json"
            for task in suite.tasks}
    scores = {task: read_json(path)["scores"] for task, path in kept.items() if path.exists()}
    missing = [task for task in suite.tasks if task not in scores]
    if missing:
        for task, found in suite.score(model, missing, prompts).items():
            write_json_atomic({"suite": suite.name, "task": task, "model_fingerprint": identity, "scores": found},
                              kept[task])
            scores[task] = found
    return scores


def _remove_empty_folders(root: Path) -> None:
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [root]:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _file_name(task: str) -> str:
    return re.sub(r"[^\w.-]", "_", task)


def markdown(table: pl.DataFrame) -> str:
    columns = [c for c in SCHEMA if c in table.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in table.iter_rows(named=True):
        lines.append("| " + " | ".join(f"{row[c]:.4f}" if isinstance(row[c], float) else "" if row[c] is None
                                        else str(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def chart(table: pl.DataFrame) -> bytes:
    """Each model's main score per task, as grouped bars (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = table.select("suite", "task").unique(maintain_order=True).rows()
    models = table["model"].unique(maintain_order=True).to_list()
    width = 0.8 / max(len(models), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.9 * len(tasks) * max(len(models), 1) ** 0.5 + 2), 4.5))
    for i, model in enumerate(models):
        scores = dict(((s, t), v) for s, t, v in table.filter(pl.col("model") == model)
                      .select("suite", "task", MAIN_SCORE).rows())
        axes.bar([j + i * width for j in range(len(tasks))], [scores.get(task) or 0.0 for task in tasks], width,
                 label=model)
    axes.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(tasks))],
                    [f"{task}\n({suite})" for suite, task in tasks], rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("main score (NDCG@10 for retrieval)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


def write_table(table: pl.DataFrame, out: Path) -> None:
    write_parquet_atomic(table.to_arrow(), out / TABLE)
    write_bytes_atomic(markdown(table).encode(), out / MARKDOWN)
    write_bytes_atomic(chart(table), out / CHART)


def say(table: pl.DataFrame, out: Path) -> None:
    print(markdown(table), end="")
    print(f"evaluate: wrote {out / TABLE}, {out / MARKDOWN}, {out / CHART}", file=sys.stderr)
