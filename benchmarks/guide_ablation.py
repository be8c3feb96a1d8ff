"""What the guide contributes: the same student, data and steps, with and without it, over several seeds.

    flock /tmp/gist-bench.lock python benchmarks/guide_ablation.py                # both data sets, 3 seeds
    python benchmarks/guide_ablation.py --data sections --seeds 42 --max-steps 20     # a quick look

Data sets: ``sections`` (data/build_sections.py: Debian package descriptions, anchor and positive share a
section, so every same-section text in a batch is a false negative by construction) and ``sample`` (the
bundled sample). Each is embedded and searched once with the guide (pipeline.embed, pipeline.mask); the
mining variants are re-filters of copies of that work directory. Arms (train.run, same steps and seeds):

    base           the student as it is
    unguided       naive top-k mined negatives (margin none), plain in-batch loss (--guide-filter none)
    guided-mining  positive-aware mined negatives (the default rule), plain in-batch loss
    gist           the same negatives, the guide's in-batch filter (the default trainer)
    random-mask    the same negatives, as many in-batch logits masked per anchor as the guide masks, at random
    hardest-mask   ... as many, the student's highest-scored ones
    unjudged-rule  mined with --rank-min 3 --unjudged-rank-min 10, the guide's in-batch filter (which exempts
                   the anchors that rule exempts)

Every trained student is scored on val/ (for choices) and test/ (for the table): NDCG@10 mean +- std over
seeds; a difference is called real only when it exceeds 2 standard deviations of the difference of single
runs (2 * sqrt(sa^2 + sb^2)). Also printed: how often the guide's in-batch mask fires over the first
training batches (share of logits it masks beyond the self-pairs) and how many of those share the anchor's
label (section, or task for the sample), against the share of all in-batch logits that do.
Resumable: finished runs are kept in WORK/runs.jsonl and skipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, table  # noqa: E402
from gist_mining import workdir  # noqa: E402
from gist_mining.errors import UsageError  # noqa: E402
from gist_mining.loss import GISTLoss  # noqa: E402
from gist_mining.models import DEFAULT_GUIDE, DEFAULT_STUDENT, load_model  # noqa: E402
from pipeline import embed, mask  # noqa: E402
from train import run as train  # noqa: E402

DATA = {"sections": (ROOT / "data" / "sections", True), "sample": (ROOT / "data" / "sample", False)}  # (folder, --corpus)
MINING = {"topk": ["--margin-strategy", "none"], "guided": [], "unjudged": ["--rank-min", "3", "--unjudged-rank-min", "10"]}
ARMS = {"unguided": ("topk", "none"), "guided-mining": ("guided", "none"), "gist": ("guided", "precomputed"),
        "random-mask": ("guided", "random"), "hardest-mask": ("guided", "hardest"),
        "unjudged-rule": ("unjudged", "precomputed")}


def mined_copies(name: str, work: Path, guide: str) -> dict[str, Path]:
    """Embed + search once, then one re-filtered copy per mining variant."""
    folder, with_corpus = DATA[name]
    first = work / name / "guided"
    try:
        workdir.checked_mined_manifest(first)
    except UsageError:
        corpus = ["--corpus", str(folder / "corpus.parquet")] if with_corpus else []
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
    model = load_model(model_path, device="cpu")
    return {split: train.headline(train.make_evaluator(folder / split, split)(model)) for split in ("val", "test")}


def train_arm(work: Path, out: Path, seed: int, guide_filter: str, args) -> dict:
    train.main(["--work", str(work), "--out", str(out), "--student", args.student, "--max-steps", str(args.max_steps),
                "--batch-size", str(args.batch_size), "--seed", str(seed), "--guide-filter", guide_filter])
    logged = [json.loads(line) for line in (out / workdir.METRICS).read_text().splitlines()]
    masked = statistics.mean(m["masked_fraction"] for m in logged if "masked_fraction" in m)
    return {"masked_fraction": masked}


def run_all(args) -> list[dict]:
    done_path = args.work / "runs.jsonl"
    done = [json.loads(line) for line in done_path.read_text().splitlines()] if done_path.exists() else []
    done = [r for r in done if (r["steps"], r["batch_size"]) == (args.max_steps, args.batch_size)]
    have = {(r["data"], r["arm"], r["seed"]) for r in done}
    copies = {name: mined_copies(name, args.work, args.guide) for name in args.data}
    todo = [(name, "base", 0) for name in args.data]  # deterministic: one run
    todo += [(name, arm, seed) for seed in args.seeds for name in args.data for arm in args.arms]
    for name, arm, seed in todo:
        if (name, arm, seed) in have:
            continue
        record = {"data": name, "arm": arm, "seed": seed, "steps": args.max_steps, "batch_size": args.batch_size}
        if arm == "base":
            record.update(scores(args.student, DATA[name][0]))
        else:
            variant, guide_filter = ARMS[arm]
            out = args.work / name / "models" / f"{arm}-{seed}"
            record.update(train_arm(copies[name][variant], out, seed, guide_filter, args))
            record.update(scores(str(out), DATA[name][0]))
            shutil.rmtree(out)
        print(json.dumps(record), flush=True)
        done.append(record)
        with open(done_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    return done


def labels_of(name: str, work: Path) -> dict[int, str]:
    """text_id -> label: the Debian section, or for the sample the task of the pair a text belongs to."""
    texts = pl.read_parquet(work / workdir.TEXTS, columns=["text_id", "text"])
    folder = DATA[name][0]
    pairs = pl.read_parquet(folder / "train.parquet")
    label = "section" if "section" in pairs.columns else "task"
    frames = [pairs.select(pl.col(c).alias("text"), label) for c in ("query", "positive")]
    if name == "sections":
        frames.append(pl.read_parquet(folder / "corpus.parquet").select("text", label))
    known = pl.concat(frames).unique("text", keep="first")
    return dict(texts.join(known, on="text").select("text_id", label).iter_rows())


def firing(name: str, work: Path, args) -> dict:
    """Over the first --max-steps batches of the first seed: the guide's in-batch masks beyond the self-pairs."""
    data = train.TrainingData(work, 1, "cpu")
    plan = train.epoch_batches(data, train.TrainConfig(seed=args.seeds[0], batch_size=args.batch_size), 1, 0)
    label = labels_of(name, work)
    n = {"logits": 0, "eligible": 0, "same": 0, "fired": 0, "fired_same": 0}
    for rows in plan[: args.max_steps]:
        batch = data.get_batch(rows)
        guided = batch.with_student({c: batch.guide[c].float() for c in train.COLUMNS})
        d = train.TrainConfig()
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


def summary(records: list[dict], name: str, arms: list[str]) -> tuple[list[tuple], dict]:
    stats = {}
    for arm in ["base", *arms]:
        runs = [r for r in records if r["data"] == name and r["arm"] == arm]
        if not runs:
            continue
        values = {split: [r[split]["ndcg@10"] for r in runs] for split in ("val", "test")}
        stats[arm] = {split: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for split, v in values.items()}
        stats[arm]["n"] = len(runs)
        stats[arm]["masked"] = statistics.mean(r.get("masked_fraction", 0.0) for r in runs)
    rows = []
    for arm, s in stats.items():
        rows.append((arm, s["n"], *(f"{s[split][0]:.4f} +- {s[split][1]:.4f}" for split in ("val", "test")),
                     f"{s['masked']:.3f}" if arm != "base" else "-",
                     *(verdict(s, stats.get(ref)) for ref in ("guided-mining", "gist"))))
    return rows, stats


def verdict(a: dict, b: dict | None) -> str:
    """Test NDCG@10 difference a - b, and whether it exceeds 2 std of the difference of single runs."""
    if b is None or a is b:
        return "-"
    diff = a["test"][0] - b["test"][0]
    noise = 2 * (a["test"][1] ** 2 + b["test"][1] ** 2) ** 0.5
    return f"{diff:+.4f} ({'real' if abs(diff) > noise and noise > 0 else 'noise'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", choices=list(DATA), default=list(DATA))
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=train.TrainConfig.batch_size)
    parser.add_argument("--work", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--guide", default=DEFAULT_GUIDE)
    parser.add_argument("--student", default=DEFAULT_STUDENT)
    parser.add_argument("--save", type=Path, default=None, help="also write the printed tables here")
    args = parser.parse_args()
    records = run_all(args)
    lines = [f"guide ablation: {args.max_steps} steps x {args.batch_size} anchors, seeds {args.seeds}, student {args.student}, "
             f"guide {args.guide}; NDCG@10 mean +- std over seeds; differences on test vs guided-mining / gist "
             "('real' when above 2 * sqrt(sa^2 + sb^2))"]
    header = ("arm", "seeds", "val NDCG@10", "test NDCG@10", "masked (trainer)", "vs guided-mining", "vs gist")
    for name in args.data:
        rows, _ = summary(records, name, args.arms)
        fire = firing(name, args.work / name / "guided", args)
        lines += [f"\n{name}: guide's in-batch mask over the first {args.max_steps} batches: masks {fire['masked']:.3f} of "
                  f"logits beyond self-pairs; {fire['masked_same_label']:.3f} of those share the anchor's label, against "
                  f"{fire['same_label_in_batch']:.3f} of all in-batch logits; it masks {fire['same_label_masked']:.3f} "
                  "of the same-label ones", table(rows, header)]
    text = "\n".join(lines)
    print(text)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text + "\n")


if __name__ == "__main__":
    main()
