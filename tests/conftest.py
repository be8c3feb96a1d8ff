"""Shared fixtures: a tiny random BERT sentence-transformer and cross-encoder built on the fly (no downloads) and
small inputs."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "the a an of to and in on is was for with as by at from bank river money loan water fish boat cat dog "
    "mat sat ran quick brown fox jumps over lazy function returns value list string number file path open "
    "close read write data table model text query answer good bad small large red blue green tree house "
    "car road city music song book page word letter sound light dark cold hot day night time year"
).split()


def build_tiny_model(path: Path, seed: int = 0, dropout: float = 0.1) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(seed)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128,
                        initializer_range=0.3,  # spreads similarities (0.3 to 0.9) like a real model
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    raw = path / "raw"
    BertModel(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension()), Normalize()],
                                device="cpu")
    model.save(str(path / "st"))
    return path / "st"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Path:
    """Everything the suite caches (weight hashes, embeddings) goes to a temporary folder, never the user's."""
    path = tmp_path_factory.mktemp("gist-mining-cache")
    os.environ["GIST_MINING_CACHE"] = str(path)
    return path


def build_tiny_cross_encoder(path: Path, seed: int = 0, num_labels: int = 1) -> Path:
    """A tiny random CrossEncoder saved with the Identity activation, as the ms-marco ones are."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(seed)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
                        initializer_range=0.3)
    BertForSequenceClassification(config).save_pretrained(path / "raw")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(path / "raw")
    CrossEncoder(str(path / "raw"), device="cpu", activation_fn=torch.nn.Identity()).save(str(path / "ce"))
    return path / "ce"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_guide(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-guide"), seed=1)


def sentence(rng: random.Random, n: int | None = None) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n or rng.randint(3, 12)))


def make_pairs(n: int, seed: int = 0, tasks=("a", "b")) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append({"query": sentence(rng), "positive": sentence(rng), "negative": [sentence(rng)] if i % 3 else [],
                     "task": tasks[i % len(tasks)]})
    return pl.DataFrame(rows)


def read_pairs(path) -> pl.DataFrame:
    """Every validated pair of a file at once (inputs.pair_batches, concatenated)."""
    from gist_mining.inputs import pair_batches

    return pl.concat(list(pair_batches(path)))


def read_corpus(path) -> list[str]:
    """Every validated text of a corpus file at once (inputs.corpus_batches, concatenated)."""
    from gist_mining.inputs import corpus_batches

    return pl.concat(list(corpus_batches(path))).to_list()


def pairs_with_second_positives(n: int, seed: int, repeated: int) -> pl.DataFrame:
    """make_pairs, and its first ``repeated`` queries asked again with another positive: a query with several
    positives, none of which may be a candidate or negative of either row."""
    pairs = make_pairs(n, seed=seed)
    return pl.concat([pairs, pairs.head(repeated).with_columns(pl.col("positive") + " again")])


def eval_split(root: Path, pairs: pl.DataFrame) -> Path:
    """A retrieval split (queries, corpus, qrels) where each pair's positive answers its query."""
    n, folder = pairs.height, root / "eval"
    folder.mkdir()
    pl.DataFrame({"query_id": [f"q{i}" for i in range(n)], "text": pairs["query"]}).write_parquet(folder / "queries.parquet")
    pl.DataFrame({"doc_id": [f"d{i}" for i in range(n)], "text": pairs["positive"]}).write_parquet(folder / "corpus.parquet")
    pl.DataFrame({"query_id": [f"q{i}" for i in range(n)], "doc_id": [f"d{i}" for i in range(n)],
                  "score": [1] * n}).write_parquet(folder / "qrels.parquet")
    return folder


def run_module(module: str, *args, check=True, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                            cwd=ROOT, env=env, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{module} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def gist_loss(**settings):
    """GISTLoss with the trainer's defaults (gist_mining.training.TrainConfig) for the settings not given."""
    from gist_mining.loss import GISTLoss
    from gist_mining.training import TrainConfig

    d = TrainConfig()
    return GISTLoss(**{"temperature": d.temperature, "margin_strategy": d.in_batch_margin_strategy,
                       "margin": d.in_batch_margin, **settings})


def run_stage(module, *args) -> int:
    """A stage's main in this process, as its command line would run it: the exit status."""
    from gist_mining import cli

    try:
        cli.run(lambda: module.main([str(a) for a in args]))
    except SystemExit as exit_:
        return exit_.code
    return 0


def st_range_max(k: int) -> int:
    """mine_hard_negatives' range_max that makes it consider k candidates besides the positives, as pipeline.mask's
    --k does. From sentence-transformers 6.3 it searches one more (room for the query's own text, which it now
    excludes as we do) and keeps it when the query is not in the corpus."""
    from packaging.version import Version
    from sentence_transformers import __version__

    return k - 1 if Version(__version__) >= Version("6.3") else k


def paper_batches(tasks: list[str], batch_size: int, seed: int, epoch: int) -> tuple[list[list[int]], int]:
    """GISTEmbed's batches of rows with these tasks (training.batches.PaperPlan), and how many rows they leave out."""
    from gist_mining.training.batches import PaperPlan, PlanRows

    plan = PaperPlan(PlanRows.of(pl.Series([[]] * len(tasks), dtype=pl.List(pl.Int64)), tasks), batch_size, seed, epoch)
    return list(plan), plan.waiting


def plan_batches(texts: list, tasks: list[str], *args, **kwargs) -> tuple[list[list[int]], int]:
    """train.run's batches of rows with these texts (a collection of ints each) and tasks (training.batches.EpochPlan),
    and how many rows wait."""
    from gist_mining.training.batches import EpochPlan, PlanRows

    plan = EpochPlan(PlanRows.of(pl.Series([sorted(row) for row in texts], dtype=pl.List(pl.Int64)), tasks), *args, **kwargs)
    return list(plan), plan.waiting
