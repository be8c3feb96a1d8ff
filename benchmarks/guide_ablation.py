"""What the guide contributes: the same student, data and steps, with and without it, over several seeds.

    flock /tmp/bench.lock python -m benchmarks.guide_ablation         # 3 data sets, 3 batch sizes, 3 seeds
    python -m benchmarks.guide_ablation --data fn_truth --seeds 42 --batch-sizes 32 --anchors 320   # a quick look

Data sets: ``sections`` (data/build_sections.py: Debian package descriptions, anchor and positive share a
section, so every same-section text in a batch is a false negative by construction), ``sample`` (the
bundled sample), and ``fn_truth`` (data/fn_truth: a WordNet lemma as the query, one of its senses' glosses
as the positive; the lemma's other senses are false negatives by the data, not by a label: they answer the
bare word as well, are in the training corpus to be mined, and are relevant in val/ and test/; lemmas split
three ways, see fn_truth_task). Each is embedded and searched once with the guide (pipeline.embed,
pipeline.mask); the mining variants are re-filters of copies of that work directory.

Batch sizes (--batch-sizes): every arm at each, with the same number of anchors seen (--anchors), so fewer
steps at larger batches; GradCache (--mini-batch-size) above --grad-cache-above anchors. Arms (train.run,
same anchors and seeds):

    base           the student as it is
    unguided       naive top-k mined negatives (margin none), plain in-batch loss (--guide-filter none)
    guided-mining  positive-aware mined negatives (the default rule), plain in-batch loss
    gist           the same negatives, the guide's in-batch filter (the default trainer)
    random-mask    the same negatives, as many in-batch logits masked per anchor as the guide masks, at random
    hardest-mask   ... as many, the student's highest-scored ones
    unjudged-rule  mined with --rank-min 3 --unjudged-rank-min 10, the guide's in-batch filter (which exempts
                   the anchors that rule exempts)
    unjudged+self  ... the guide's filter where it can judge, the student's own filter for every anchor
    self           positive-aware mined negatives, the student's own in-batch filter (Qwen3-Embedding), no guide
    guide+self     ... either the guide's or the student's filter masks
    self+hardness  the student's filter, hardness weighting 5 on all negatives (no guide in the loss)
    gist+hardness  the guide's filter, hardness weighting 5 on all negatives (MNRL's hardness_mode)
    fn-positives   the guide's filter, each anchor's first known false negative brought into the batch, those and
                   the guide-certain in-batch ones counted as positives (RLHN)
    suspect-weight the guide's filter, suspects weighted 0.3 instead of masked (ColPali-style)
    st-gist        gist trained by sentence-transformers' SentenceTransformerTrainer with gist_mining.st's
                   StoredGuideGISTLoss and mined_dataset(short="keep") (every anchor, as train.run trains them,
                   in multi-dataset batches; no-duplicates sampler; train.run's learning rate, warmup, weight
                   decay, clipping, temperature, steps and seed): the two paths should agree
    st-gist-drop   ... mined_dataset's default short="drop": anchors short of a negative left out
    distill-*      gist plus the guide as teacher (train.run --distill, gist_mining.distill): scores (KL toward the
                   guide's softmax over each anchor's in-batch entries; weight 1 or 0.5, teacher temperature 0.05
                   or 0.02, the suspects out of both distributions, or of the teacher's only, or neither),
                   embeddings (cosine to the guide's vectors through a trained map), both; distill-corpus and
                   distill-embeddings-corpus: the same with 16 texts of the work directory per batch as extra rows
                   (--distill-corpus: candidates in the KL's softmaxes only, or vectors matched). No MarginMSE arm
                   (--distill-margin-mse): the data sets are searched without a cross-encoder, so no table holds its scores
    guide          (untrained, as base) the guide model itself on val/ and test/: the ceiling distillation aims at

Every trained student is scored on val/ (for choices) and test/ (for the table): NDCG@10 mean +- std over
seeds; a difference is called real only when it exceeds 2 standard deviations of the difference of single
runs (2 * sqrt(sa^2 + sb^2)); against guided-mining and gist at the same batch size, and against the
trainer's default (gist at its default batch size). Also printed: how often the guide's in-batch mask fires over the first
training batches (share of logits it masks beyond the self-pairs) and how many of those share the anchor's
label (section, or task for the sample), against the share of all in-batch logits that do.
Resumable across sessions and machines: each finished run is a line of --runs (committed with the results, so a
later session or a GPU machine goes on where this one stopped) and is skipped; each records its seconds
(training and scoring) and the device, printed per batch size to plan a full run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import statistics
import time
from pathlib import Path

import polars as pl
import torch

from benchmarks.common import ROOT, table
from gist_mining import workdir
from gist_mining.errors import UsageError
from gist_mining.loss import GISTLoss
from gist_mining.models import DEFAULT_GUIDE, DEFAULT_STUDENT, load_model
from gist_mining.training.config import TrainConfig
from gist_mining.training.data import COLUMNS, TrainingData
from gist_mining.training.evaluate import headline, make_evaluator
from gist_mining.training.loop import epoch_batches
from pipeline import embed, mask
from train import run as train_command

FN_TRUTH = ROOT / "data" / "fn_truth"
DATA = {"sections": ROOT / "data" / "sections", "sample": ROOT / "data" / "sample", "fn_truth": None}  # None: built
MINING = {"topk": ["--margin-strategy", "none"], "guided": [], "unjudged": ["--rank-min", "3", "--unjudged-rank-min", "10"]}
# arm -> (mining variant, --guide-filter, further train.run options)
ARMS = {"unguided": ("topk", "none", []), "guided-mining": ("guided", "none", []), "gist": ("guided", "precomputed", []),
        "random-mask": ("guided", "random", []), "hardest-mask": ("guided", "hardest", []),
        "unjudged-rule": ("unjudged", "precomputed", []), "unjudged+self": ("unjudged", "guide+self", []),
        "self": ("guided", "self", []), "guide+self": ("guided", "guide+self", []),
        "self+hardness": ("guided", "self", ["--hardness-strength", "5"]),
        "gist+hardness": ("guided", "precomputed", ["--hardness-strength", "5"]),
        "fn-positives": ("guided", "precomputed", ["--false-negatives", "positives", "--false-negatives-in-batch", "1"]),
        "suspect-weight": ("guided", "precomputed", ["--suspect-weight", "0.3"]),
        "st-gist": ("guided", "precomputed", []), "st-gist-drop": ("guided", "precomputed", []),  # train_st
        # the guide as teacher (#35), beside the default's loss: its scores (KL; weight, teacher temperature, the
        # suspects out of both distributions unless named), its vectors (cosine through a trained map), both
        "distill-scores": ("guided", "precomputed", ["--distill", "scores"]),
        "distill-scores-w0.5": ("guided", "precomputed", ["--distill", "scores", "--distill-weight", "0.5"]),
        "distill-scores-t0.02": ("guided", "precomputed", ["--distill", "scores", "--distill-temperature", "0.02"]),
        "distill-scores-teacher": ("guided", "precomputed", ["--distill", "scores", "--distill-mask", "teacher"]),
        "distill-scores-none": ("guided", "precomputed", ["--distill", "scores", "--distill-mask", "none"]),
        "distill-embeddings": ("guided", "precomputed", ["--distill", "embeddings"]),
        "distill-both": ("guided", "precomputed", ["--distill", "scores+embeddings"]),
        "distill-corpus": ("guided", "precomputed", ["--distill", "scores", "--distill-corpus", "16"]),
        "distill-embeddings-corpus": ("guided", "precomputed", ["--distill", "embeddings", "--distill-corpus", "16"])}
SPLITS = {"val": 0.1, "test": 0.1}  # fn_truth: the share of lemmas held out for each
TASK = "wordnet-lemma"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # train.run's own choice; recorded with each run
UNTRAINED = ("base", "guide")  # scored as they are: the student before training, and the guide model itself
WITH_CORPUS = {"sections", "fn_truth"}  # embedded with their corpus.parquet (the sample's: left out, as before)


def fn_truth_task(out: Path, seed: int = 7) -> Path:
    """data/fn_truth as a retrieval task: lemmas drawn into train/val/test (seeded); val/ and test/ hold their
    lemmas as queries, every sense gloss of those lemmas as the corpus, all of a lemma's senses relevant. The
    training pairs and corpus leave out every held-out gloss (a gloss two lemmas share included)."""
    if (out / "train.parquet").exists():
        return out
    truth = pl.read_parquet(FN_TRUTH / "truth.parquet")
    corpus = pl.read_parquet(FN_TRUTH / "corpus.parquet").with_columns(
        pl.col("text").map_elements(workdir.text_id, return_dtype=pl.Int64).alias("id"))
    lemmas = sorted(truth["query"])
    random.Random(seed).shuffle(lemmas)
    cut = [round(share * len(lemmas)) for share in SPLITS.values()]
    split_of = {"val": lemmas[: cut[0]], "test": lemmas[cut[0]: cut[0] + cut[1]], "train": lemmas[cut[0] + cut[1]:]}
    senses = truth.select("query", pl.concat_list(pl.col("positive_id"), "false_negative_ids").alias("id")).explode("id")
    held = senses.filter(~pl.col("query").is_in(split_of["train"]))["id"].implode()
    for split in SPLITS:
        queries = pl.DataFrame({"query": sorted(split_of[split])}).with_row_index("n").with_columns(
            pl.format("q{}", "n").alias("query_id"))
        qrels = queries.join(senses, on="query").select("query_id", pl.col("id").cast(pl.String).alias("doc_id"),
                                                        pl.lit(1).alias("score")).unique().sort("query_id", "doc_id")
        (out / split).mkdir(parents=True, exist_ok=True)
        queries.select("query_id", pl.col("query").alias("text"), pl.lit(TASK).alias("task")).write_parquet(
            out / split / "queries.parquet")
        corpus.filter(pl.col("id").cast(pl.String).is_in(qrels["doc_id"].implode())).select(
            pl.col("id").cast(pl.String).alias("doc_id"), "text").write_parquet(out / split / "corpus.parquet")
        qrels.write_parquet(out / split / "qrels.parquet")
    train = truth.filter(pl.col("query").is_in(split_of["train"]) & ~pl.col("positive_id").is_in(held))
    lemma_of = senses.join(train.select("query"), on="query").unique("id", keep="first")
    corpus.filter(~pl.col("id").is_in(held)).join(lemma_of, on="id", how="left").select(
        "text", pl.col("query").alias("lemma")).write_parquet(out / "corpus.parquet")
    train.select("query", "positive", pl.lit(TASK).alias("task"), pl.col("query").alias("lemma")).write_parquet(
        out / "train.parquet")
    return out


def folder_of(name: str, work: Path) -> Path:
    return DATA[name] or fn_truth_task(work / name / "task")


def mined_copies(name: str, work: Path, guide: str) -> dict[str, Path]:
    """Embed + search once, then one re-filtered copy per mining variant."""
    folder = folder_of(name, work)
    first = work / name / "guided"
    try:
        workdir.checked_mined_manifest(first)
    except UsageError:
        corpus = ["--corpus", str(folder / "corpus.parquet")] if name in WITH_CORPUS else []
        embed.main(["--input", str(folder / "train.parquet"), *corpus, "--work", str(first), "--guide", guide])
        mask.main(["--work", str(first)])
    copies = {"guided": first}
    for variant, rules in MINING.items():
        if variant == "guided":
            continue
        copies[variant] = work / name / variant
        try:
            workdir.checked_mined_manifest(copies[variant])
        except UsageError:
            shutil.rmtree(copies[variant], ignore_errors=True)
            shutil.copytree(first, copies[variant], ignore=shutil.ignore_patterns(workdir.MODELS))
            mask.main(["--work", str(copies[variant]), "--refilter", *rules])
    return copies


def scores(model_path: str, folder: Path) -> dict:
    model = load_model(model_path, device=DEVICE)
    return {split: headline(make_evaluator(folder / split, split)(model)) for split in ("val", "test")}


def steps_for(batch_size: int, args) -> int:
    """Steps that show --anchors anchors at this batch size: the same texts seen at every size."""
    return args.anchors // batch_size


def train_st(work: Path, out: Path, seed: int, batch_size: int, short: str, args) -> dict:
    """gist through the stock SentenceTransformerTrainer: StoredGuideGISTLoss on mined_dataset(work, 1, short),
    with train.run's defaults for everything both trainers have."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    from gist_mining.st import StoredGuideGISTLoss, mined_dataset

    d = TrainConfig()
    model = load_model(args.student, device=DEVICE)
    cache = args.mini_batch_size if batch_size > args.grad_cache_above else None
    loss = StoredGuideGISTLoss(model, work, mini_batch_size=cache)
    steps = steps_for(batch_size, args)
    settings = SentenceTransformerTrainingArguments(
        str(out), per_device_train_batch_size=batch_size, batch_sampler="no_duplicates", max_steps=steps,
        learning_rate=d.lr, warmup_steps=int(d.warmup_ratio * steps), weight_decay=d.weight_decay,
        max_grad_norm=1.0, seed=seed, logging_steps=1, report_to="none", use_cpu=DEVICE == "cpu", disable_tqdm=True,
        save_strategy="no", dataloader_drop_last=True)
    dataset = mined_dataset(work, d.negatives_per_anchor, short)
    trainer = SentenceTransformerTrainer(model=model, args=settings, train_dataset=dataset, loss=loss)
    loss.log_masked_fraction(trainer)
    trainer.train()
    model.save(str(out))
    return {"masked_fraction": statistics.mean(log["masked_fraction"] for log in trainer.state.log_history
                                               if "masked_fraction" in log)}


def train_arm(work: Path, out: Path, seed: int, arm: str, batch_size: int, args) -> dict:
    if arm.startswith("st-gist"):
        return train_st(work, out, seed, batch_size, "drop" if arm.endswith("drop") else "keep", args)
    _, guide_filter, options = ARMS[arm]
    if batch_size > args.grad_cache_above:  # GradCache: the batch's loss, a mini-batch's memory
        options = [*options, "--mini-batch-size", str(args.mini_batch_size)]
    train_command.main(["--work", str(work), "--out", str(out), "--student", args.student, "--max-steps",
                str(steps_for(batch_size, args)), "--batch-size", str(batch_size), "--seed", str(seed),
                "--guide-filter", guide_filter, *options])
    logged = [json.loads(line) for line in (out / workdir.METRICS).read_text().splitlines()]
    masked = statistics.mean(m["masked_fraction"] for m in logged if "masked_fraction" in m)
    return {"masked_fraction": masked}


def run_all(args) -> list[dict]:
    done_path = args.runs
    done = [json.loads(line) for line in done_path.read_text().splitlines()] if done_path.exists() else []
    done = [r for r in done if r.get("anchors") == args.anchors]
    have = {(r["data"], r["arm"], r["seed"], r["batch_size"]) for r in done}
    copies = {name: mined_copies(name, args.work, args.guide) for name in args.data}
    # deterministic and untrained: one run, no batch size; the guide: the ceiling a distilled student aims at
    todo = [(name, untrained, 0, 0) for name in args.data for untrained in UNTRAINED]
    todo += [(name, arm, seed, size) for seed in args.seeds for size in args.batch_sizes for name in args.data
             for arm in args.arms]
    for name, arm, seed, size in todo:
        if (name, arm, seed, size) in have:
            continue
        started = time.perf_counter()
        record = {"data": name, "arm": arm, "seed": seed, "batch_size": size, "anchors": args.anchors,
                  "steps": steps_for(size, args) if size else 0, "device": DEVICE}
        folder = folder_of(name, args.work)
        if arm in UNTRAINED:
            record.update(scores(args.student if arm == "base" else args.guide, folder))
        else:
            out = args.work / name / "models" / f"{arm}-{seed}-{size}"
            record.update(train_arm(copies[name][ARMS[arm][0]], out, seed, arm, size, args))
            record.update(scores(str(out), folder))
            shutil.rmtree(out)
        record["seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps(record), flush=True)
        done.append(record)
        with open(done_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    return done


def labels_of(name: str, work: Path, folder: Path) -> dict[int, str]:
    """text_id -> label: the Debian section, the WordNet lemma (fn_truth: a lemma's senses share it; glosses
    of no training lemma have none), or for the sample the task of the pair a text belongs to."""
    texts = pl.read_parquet(work / workdir.TEXTS, columns=["text_id", "text"])
    pairs = pl.read_parquet(folder / "train.parquet")
    label = next(c for c in ("section", "lemma", "task") if c in pairs.columns)
    frames = [pairs.select(pl.col(c).alias("text"), label) for c in ("query", "positive")]
    if name in WITH_CORPUS:
        frames.append(pl.read_parquet(folder / "corpus.parquet").select("text", label))
    known = pl.concat(frames).drop_nulls(label).unique("text", keep="first")
    return dict(texts.join(known, on="text").select("text_id", label).iter_rows())


def firing(name: str, work: Path, folder: Path, batch_size: int, steps: int, seed: int) -> dict:
    """Over the first ``steps`` batches of a seed's plan: the guide's in-batch masks beyond the self-pairs."""
    data = TrainingData(work, 1, "cpu")
    plan = epoch_batches(data, TrainConfig(seed=seed, batch_size=batch_size), 1, 0)
    label = labels_of(name, work, folder)
    n = {"logits": 0, "eligible": 0, "same": 0, "fired": 0, "fired_same": 0}
    for rows in itertools.islice(plan, steps):
        batch = data.get_batch(rows)
        guided = batch.with_student({c: batch.guide[c].float() for c in COLUMNS})
        d = TrainConfig()
        _, plain_mask, labels, _ = GISTLoss(d.temperature, d.in_batch_margin_strategy, d.in_batch_margin,
                                            guided=False).masked_logits(guided)
        _, guide_mask, _, _ = GISTLoss(d.temperature, d.in_batch_margin_strategy, d.in_batch_margin).masked_logits(guided)
        eligible = ~plain_mask
        eligible[torch.arange(len(labels)), labels] = False
        fired = guide_mask & eligible
        ids = torch.cat([batch.ids["positives"], batch.ids["negatives"], batch.ids["queries"], batch.ids["positives"]])
        cand = [label.get(i) for i in ids.tolist()]
        anchor = [label.get(i) for i in batch.ids["queries"].tolist()]
        same = torch.tensor([[a is not None and a == c for c in cand] for a in anchor])
        for key, value in (("logits", plain_mask.numel()), ("eligible", eligible.sum()), ("same", (same & eligible).sum()),
                           ("fired", fired.sum()), ("fired_same", (fired & same).sum())):
            n[key] += int(value)
    return {"masked": n["fired"] / n["logits"], "masked_same_label": n["fired_same"] / max(n["fired"], 1),
            "same_label_in_batch": n["same"] / n["eligible"], "same_label_masked": n["fired_same"] / max(n["same"], 1)}


def summary(records: list[dict], name: str, size: int, arms: list[str]) -> list[tuple]:
    """One table row per arm at this batch size (base: the untrained student)."""
    stats = {arm: arm_stats(records, name, arm, 0 if arm in UNTRAINED else size) for arm in [*UNTRAINED, *arms]}
    default = arm_stats(records, name, "gist", TrainConfig().batch_size)
    rows = []
    for arm, s in stats.items():
        if s is None:
            continue
        rows.append((arm, s["n"], *(f"{s[split][0]:.4f} +- {s[split][1]:.4f}" for split in ("val", "test")),
                     f"{s['masked']:.3f}" if arm not in UNTRAINED else "-",
                     *(verdict(s, b, judged=arm in UNTRAINED or s["n"] > 1)
                       for b in (stats.get("guided-mining"), stats.get("gist"), default)),
                     f"{s['seconds']:.0f}"))
    return rows


def arm_stats(records: list[dict], name: str, arm: str, size: int) -> dict | None:
    runs = [r for r in records if (r["data"], r["arm"], r["batch_size"]) == (name, arm, size)]
    if not runs:
        return None
    values = {split: [r[split]["ndcg@10"] for r in runs] for split in ("val", "test")}
    stats = {split: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for split, v in values.items()}
    return {**stats, "n": len(runs), "masked": statistics.mean(r.get("masked_fraction", 0.0) for r in runs),
            "seconds": statistics.mean(r.get("seconds", 0.0) for r in runs)}


def recipes(records: list[dict], args) -> list[str]:
    """Every trained (arm, batch size) against the default (gist at the trainer's batch size) on each data set:
    the recipe is chosen on val/ (the highest mean val NDCG@10 gain over the data sets all have), then judged on
    test/: it must beat the default by more than 2 std on at least two data sets and lose on none."""
    default_size = TrainConfig().batch_size
    candidates = sorted({(r["arm"], r["batch_size"]) for r in records  # st-*: the default by another trainer
                         if r["arm"] not in UNTRAINED and not r["arm"].startswith("st-")} - {("gist", default_size)})
    rows, val_gain = [], {}
    for arm, size in candidates:
        per_data, gains = [], []
        for name in args.data:
            a, b = arm_stats(records, name, arm, size), arm_stats(records, name, "gist", default_size)
            if a is None or b is None or min(a["n"], b["n"]) < 2:
                per_data.append("-")
                continue
            gains.append(a["val"][0] - b["val"][0])
            per_data.append(verdict(a, b))
        if len(gains) == len(args.data):
            val_gain[arm, size] = sum(gains) / len(gains)
        rows.append((arm, size, *per_data, f"{val_gain[arm, size]:+.4f}" if (arm, size) in val_gain else "-"))
    lines = [f"\nevery recipe against the default (gist, batch {default_size}): test NDCG@10 difference ('real' beyond "
             "2 std) per data set, and the mean val difference over them (the choice)",
             table(rows, ("arm", "batch", *args.data, "val gain (mean)"))]
    if val_gain:
        best = max(val_gain, key=val_gain.get)
        verdicts = [verdict(arm_stats(records, n, *best), arm_stats(records, n, "gist", default_size)) for n in args.data]
        wins = sum(v.startswith("+") and "real" in v for v in verdicts)
        losses = sum(v.startswith("-") and "real" in v for v in verdicts)
        lines.append(f"chosen on val: {best[0]} at batch {best[1]} (mean val gain {val_gain[best]:+.4f}); on test it beats "
                     f"the default on {wins} of {len(args.data)} data sets and loses on {losses}: "
                     f"{'a new default' if wins >= 2 and not losses else 'the default stays'}")
    return lines


def guide_gap(records: list[dict], args) -> list[str]:
    """The guide's own test NDCG@10 (the ceiling a distilled student aims at) against the default's, and the share of
    that gap each distillation recipe closes (its gain over the default / the guide's); where the guide scores
    below the default there is no gap to close, and the recipe's difference is what counts."""
    default_size = TrainConfig().batch_size
    arms = sorted({r["arm"] for r in records if r["arm"].startswith("distill")})
    rows = []
    for name in args.data:
        guide, default = arm_stats(records, name, "guide", 0), arm_stats(records, name, "gist", default_size)
        if guide is None or default is None:
            continue
        gap = guide["test"][0] - default["test"][0]
        shares = []
        for arm in arms:
            s = arm_stats(records, name, arm, default_size)
            shares.append("-" if s is None else f"{(s['test'][0] - default['test'][0]) / gap:+.0%}" if gap > 0
                          else "no gap")
        rows.append((name, f"{guide['test'][0]:.4f}", f"{default['test'][0]:.4f}", f"{gap:+.4f}", *shares))
    if not rows:
        return []
    return [f"\nthe guide ({args.guide}) on each test split against the default (gist, batch {default_size}), and the "
            "share of the gap (guide - default) each distillation recipe closes", table(
                rows, ("data set", "guide test NDCG@10", "default", "gap", *arms))]


def verdict(a: dict, b: dict | None, judged: bool = True) -> str:
    """Test NDCG@10 difference a - b, and whether it exceeds 2 std of the difference of single runs (not ``judged``:
    a trained arm of one seed, whose spread is unknown)."""
    if b is None or a == b:
        return "-"
    diff = a["test"][0] - b["test"][0]
    if not judged:
        return f"{diff:+.4f} (1 seed)"
    noise = 2 * (a["test"][1] ** 2 + b["test"][1] ** 2) ** 0.5
    return f"{diff:+.4f} ({'real' if abs(diff) > noise and noise > 0 else 'noise'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", choices=list(DATA), default=list(DATA))
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128, 512])
    parser.add_argument("--anchors", type=int, default=1536, help="anchors each run sees (48 steps at 32, 3 at 512); "
                        "a multiple of every batch size")
    parser.add_argument("--grad-cache-above", type=int, default=128, help="batch sizes above this train with GradCache")
    parser.add_argument("--mini-batch-size", type=int, default=256, help="GradCache's texts per forward pass")
    parser.add_argument("--work", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "results" / "guide_ablation_runs.jsonl",
                        help="finished runs, one JSON line each: read to skip them, appended to")
    parser.add_argument("--guide", default=DEFAULT_GUIDE)
    parser.add_argument("--student", default=DEFAULT_STUDENT)
    parser.add_argument("--save", type=Path, default=None, help="also write the printed tables here")
    parser.add_argument("--report-only", action="store_true", help="print the tables of the runs in --runs, train nothing")
    args = parser.parse_args()
    if any(args.anchors % size for size in args.batch_sizes):
        parser.error(f"--anchors {args.anchors} is not a multiple of every batch size {args.batch_sizes}: runs would "
                     "see different numbers of texts")
    records = run_all(args) if not args.report_only else [
        json.loads(line) for line in args.runs.read_text().splitlines() if json.loads(line)["anchors"] == args.anchors]
    default = TrainConfig().batch_size
    lines = [f"guide ablation: {args.anchors} anchors per run (steps = anchors / batch size), seeds {args.seeds}, "
             f"student {args.student}, guide {args.guide}; NDCG@10 mean +- std over seeds; differences on test vs "
             f"guided-mining / gist at the same batch size and vs the default (gist at {default}) ('real' when above "
             "2 * sqrt(sa^2 + sb^2)); seconds: one run, training and scoring"]
    header = ("arm", "seeds", "val NDCG@10", "test NDCG@10", "masked (trainer)", "vs guided-mining", "vs gist",
              "vs default", "seconds")
    for name in args.data:
        first = args.batch_sizes[0]
        steps = steps_for(first, args)
        if (args.work / name / "guided" / workdir.MINED_MANIFEST).exists():
            fire = firing(name, args.work / name / "guided", folder_of(name, args.work), first, steps, args.seeds[0])
            lines.append(f"\n{name}: guide's in-batch mask over the first {steps} batches of {first}: masks "
                         f"{fire['masked']:.3f} of logits beyond self-pairs; {fire['masked_same_label']:.3f} of those "
                         f"share the anchor's label, against {fire['same_label_in_batch']:.3f} of all in-batch logits; "
                         f"it masks {fire['same_label_masked']:.3f} of the same-label ones")
        else:  # --report-only where the work directories are not
            lines.append(f"\n{name}: (no work directory here: the guide's firing rate is not measured)")
        for size in args.batch_sizes:
            lines += [f"\n{name}, batch size {size} ({steps_for(size, args)} steps"
                      f"{', GradCache' if size > args.grad_cache_above else ''}):", table(summary(records, name, size, args.arms), header)]
    lines += recipes(records, args) + guide_gap(records, args)
    text = "\n".join(lines)
    print(text)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text + "\n")


if __name__ == "__main__":
    main()
