"""The suites a model is scored on, each a small class with the same face: ``name`` (the table's suite column),
``tasks`` (its task column) and ``score(model, tasks, prompts, ...)`` -> {task: metrics}; the sentence-transformers
suites also have ``key(task)`` (what the task's data is, for reusing a finished result), MTEB reuses through its
own ResultCache. Scoring is sentence-transformers' (InformationRetrievalEvaluator,
NanoBEIREvaluator) or mteb's; nothing here computes a metric itself.

Every suite checks what it can when it is made (a folder's rows, NanoBEIR names and cached files, MTEB task
names), so that a bad suite stops the command before any model runs or anything is written."""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np

from gist_mining.errors import UsageError
from gist_mining.evaluation.splits import RetrievalSplit, read_split
from gist_mining.storage import file_sha256

# The metric columns of the results table, named as sentence-transformers names them, and MTEB's main score.
METRICS = ("ndcg@10", "mrr@10", "recall@100")
MAIN_SCORE = "main_score"
# InformationRetrievalEvaluator's settings everywhere (train.run --eval, pipeline.run, the evaluate command): the
# README's held-out tables were measured with these.
IR_SETTINGS = dict(mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[10, 100],
                   map_at_k=[100], batch_size=128)
SPLIT_NAMES = {"test", "val", "dev", "validation", "train"}


def retrieval_evaluator(split: RetrievalSplit, name: str, prompts: dict | None = None, sizes: tuple[int, ...] = (),
                        show_progress_bar: bool = False):
    """sentence-transformers' InformationRetrievalEvaluator on ``split``; ``prompts`` per role ("query",
    "document"), else the model's own (encode_query's, encode_document's). With ``sizes``, also with the
    embeddings cut to each size (metrics named dim<size>_...), in a SequentialEvaluator. It also serves as
    SentenceTransformerTrainer's ``evaluator=`` (scored every ``eval_steps``)."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator, SequentialEvaluator

    evaluators = [InformationRetrievalEvaluator(
        queries=split.queries, corpus=split.corpus, relevant_docs=split.relevant, name=size_name, truncate_dim=size,
        show_progress_bar=show_progress_bar, **IR_SETTINGS,
        **({"query_prompt": prompts["query"], "corpus_prompt": prompts["document"]} if prompts else {}),
    ) for size_name, size in [(name, None)] + [(f"dim{size}", size) for size in sizes]]
    return evaluators[0] if len(evaluators) == 1 else SequentialEvaluator(evaluators)


def headline(metrics: dict) -> dict:
    """NDCG@10, MRR@10 and recall@100 of the whole embeddings, and as dim<size>_... of each cut size, to 4 digits
    (train.run's log and record, pipeline.run's table)."""
    return {(size.group(0) if size else "") + short: round(v, 4) for short in METRICS for k, v in metrics.items()
            if k.endswith(f"cosine_{short}") for size in [re.match(r"dim\d+_", k)]}


def _ir_row(metrics: dict, primary_metric: str) -> dict:
    """An evaluator's METRICS under its main score function (``primary_metric``: NAME_cosine_ndcg@10)."""
    prefix = primary_metric.removesuffix("ndcg@10")
    row = {m: float(metrics[prefix + m]) for m in METRICS}
    return {**row, MAIN_SCORE: row["ndcg@10"]}


def digest(*parts) -> str:
    """A SHA-256 of JSON-able parts: what a kept result was made from."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class RetrievalFolder:
    """A retrieval split in a folder, BEIR's layout or the bundled sets' (``read_split``), as one task."""

    name = "beir"

    def __init__(self, folder: Path, split: str = "test", task: str | None = None):
        folder = Path(folder)
        self.split = read_split(folder, split)
        self.task = task or (f"{folder.resolve().parent.name}/{folder.name}" if folder.name in SPLIT_NAMES
                             else folder.name)
        self.tasks = [self.task]
        self._key = digest([file_sha256(f) for f in self.split.files], IR_SETTINGS)

    def key(self, task: str) -> str:
        return self._key

    def evaluator(self, prompts: dict | None = None, show_progress_bar: bool = False):
        """sentence-transformers' InformationRetrievalEvaluator on the folder (also SentenceTransformerTrainer's
        ``evaluator=``)."""
        return retrieval_evaluator(self.split, re.sub(r"\W", "_", self.task), prompts,
                                   show_progress_bar=show_progress_bar)

    def score(self, model, tasks: list[str], prompts: dict | None) -> dict[str, dict]:
        evaluator = self.evaluator(prompts, show_progress_bar=True)
        return {self.task: _ir_row(evaluator(model), evaluator.primary_metric)}


NANOBEIR_ID = "sentence-transformers/NanoBEIR-en"


class NanoBEIR:
    """sentence-transformers' NanoBEIREvaluator over some of its 13 data sets (None: all), its data read from the
    Hugging Face cache (HF_HUB_OFFLINE=1 serves it; what is missing is named with the command that fetches it)
    through ``gist_mining.inputs.hub_files``, as ``pipeline.embed --input`` reads Hub data sets. A row per data set
    and their mean (NanoBEIREvaluator's NanoBEIR_mean)."""

    name = "nanobeir"

    def __init__(self, names: list[str] | None = None, dataset_id: str = NANOBEIR_ID):
        from sentence_transformers.sentence_transformer.evaluation.nano_beir import DATASET_NAME_TO_HUMAN_READABLE

        from gist_mining.inputs import HubSelection, hub_files

        known = DATASET_NAME_TO_HUMAN_READABLE
        names = [n.lower().removeprefix("nano") for n in names] if names else list(known)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(f"--nanobeir {' '.join(unknown)}: not a NanoBEIR data set (has: {', '.join(known)})")
        self.dataset_id, self.names = dataset_id, names
        self.tasks = [f"Nano{known[n]}" for n in names] + ["mean"]
        # {split (NanoSciFact): {subset (corpus, queries, qrels): files}}, from the cache now: a missing one stops here.
        self.files = {task: {subset: hub_files(dataset_id, HubSelection(split=task, subset=subset))
                             for subset in ("corpus", "queries", "qrels")} for task in self.tasks[:-1]}

    def key(self, task: str) -> str:
        files = self.files if task == "mean" else {task: self.files[task]}
        return digest(self.dataset_id, {t: {s: [file_sha256(f) for f in fs] for s, fs in by.items()}
                                         for t, by in files.items()}, IR_SETTINGS)

    def evaluator(self, prompts: dict | None = None, names: list[str] | None = None, show_progress_bar: bool = False):
        """sentence-transformers' NanoBEIREvaluator on the suite's data sets (or ``names`` of them), from the cached
        files; also SentenceTransformerTrainer's ``evaluator=``, as sentence-transformers recommends in training."""
        return _cached_nanobeir(self.files, dataset_names=names or self.names, dataset_id=self.dataset_id,
                                show_progress_bar=show_progress_bar, write_csv=False, **IR_SETTINGS,
                                **({"query_prompts": prompts["query"], "corpus_prompts": prompts["document"]}
                                   if prompts else {}))

    def score(self, model, tasks: list[str], prompts: dict | None) -> dict[str, dict]:
        """The tasks asked for; "mean" is the mean over every data set of the suite, so it needs them all."""
        wanted = [n for n, t in zip(self.names, self.tasks) if t in tasks or "mean" in tasks]
        evaluator = self.evaluator(prompts, wanted, show_progress_bar=True)
        metrics = evaluator(model)
        rows = {ir.name: _ir_row(metrics, ir.primary_metric) for ir in evaluator.evaluators}
        if "mean" in tasks:
            rows["mean"] = _ir_row(metrics, evaluator.primary_metric)
        return {t: rows[t] for t in tasks}


def _cached_nanobeir(files: dict, **settings):
    """NanoBEIREvaluator whose loading hook reads the files found in the Hugging Face cache (``NanoBEIR.files``)
    instead of asking ``datasets.load_dataset`` (which, offline, needs its own prepared copy)."""
    from sentence_transformers.sentence_transformer.evaluation import NanoBEIREvaluator

    class CachedNanoBEIR(NanoBEIREvaluator):
        def _load_dataset_subset_split(self, subset: str, split: str, required_columns: list[str]):
            import datasets
            import pyarrow as pa
            import pyarrow.parquet as pq
            from datasets.table import InMemoryTable

            return datasets.Dataset(InMemoryTable(pa.concat_tables(pq.read_table(f) for f in files[split][subset])))

    return CachedNanoBEIR(**settings)


class MTEB:
    """MTEB tasks and benchmarks by name through the ``mteb`` package (2.x, the ``[eval]`` extra): a row per task,
    its main score and, for retrieval, METRICS, averaged over the task's evaluation splits and subsets as
    ``TaskResult.get_score`` does. Finished results are kept in mteb's own ResultCache, keyed by the model's
    fingerprint, and reused."""

    name = "mteb"

    def __init__(self, names: list):
        try:
            import mteb
        except ImportError:
            raise UsageError("--mteb needs the mteb package: pip install 'gist-mining[eval]'") from None
        tasks = []
        for name in names:
            if not isinstance(name, str):  # an mteb task object (a task of your own)
                tasks.append(name)
                continue
            try:
                tasks += list(mteb.get_benchmark(name).tasks)
            except KeyError:
                try:
                    tasks += list(mteb.get_tasks(tasks=[name]))
                except KeyError:
                    raise UsageError(f"--mteb {name}: neither an MTEB task nor an MTEB benchmark "
                                     "(mteb.get_tasks() and mteb.get_benchmarks() list them)") from None
        self.by_name = {task.metadata.name: task for task in tasks}
        self.tasks = list(self.by_name)

    def score(self, model, tasks: list[str], prompts: dict | None, cache: Path, identity: str) -> dict[str, dict]:
        """Each task through ``mteb.evaluate``, reusing what mteb's ResultCache in ``cache`` holds for the model."""
        import mteb
        from mteb.models import SentenceTransformerEncoderWrapper

        with warnings.catch_warnings():  # mteb calls sentence-transformers' renamed methods
            warnings.simplefilter("ignore", FutureWarning)
            wrapper = SentenceTransformerEncoderWrapper(model, model_prompts=prompts)
        # mteb's cache is model name/revision/task.json: the name and revision say which weights and prompts.
        wrapper.mteb_model_meta = wrapper.mteb_model_meta.model_copy(
            update={"name": "gist-mining/" + identity[:16], "revision": identity[:16]})
        rows, results = {}, mteb.ResultCache(cache)
        for name in tasks:
            task = self.by_name[name]
            try:
                result = mteb.evaluate(wrapper, task, cache=results, co2_tracker=False,
                                       overwrite_strategy="only-missing")
            except Exception as err:
                if not _data_unavailable(err):
                    raise
                dataset = task.metadata.dataset
                raise UsageError(f"--mteb {name}: its data set {dataset.get('path')} (revision {dataset.get('revision')})"
                                 f" is neither in the Hugging Face cache nor reachable ({type(err).__name__}); run "
                                 f"`python -c \"import mteb; mteb.get_task('{name}').load_data()\"` where the Hub is "
                                 "reachable and copy that machine's HF_HOME cache here") from None
            # As kept in the cache (mteb rounds what it writes), so that a rerun's row is the first run's.
            task_result = results.load_task_result(name, wrapper.mteb_model_meta) or result.task_results[0]
            rows[name] = {m: _nan_none(task_result.get_score(getter=lambda s, k=m.replace("@", "_at_"): s.get(k, math.nan)))
                          for m in METRICS}
            rows[name][MAIN_SCORE] = float(task_result.get_score())
        return rows


def _nan_none(value: float) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def _data_unavailable(err: BaseException) -> bool:
    """Whether loading a data set failed for want of the Hub (offline, unreachable, not cached)."""
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    while err is not None:
        if isinstance(err, (DatasetNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError)):
            return True
        err = err.__cause__ or err.__context__
    return False
