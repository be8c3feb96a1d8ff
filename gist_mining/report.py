"""The one-page HTML report of a work directory (``write_report``; ``python -m pipeline.report`` is its command line):
what the guide kept, what it masked, and how training went.

Plots (PNG beside the page): histograms of the scores the rules read (the guide's, or a cross-encoder's
with --score rescore) of positives, kept hard negatives and false negatives; false negatives per anchor by
task; hard negatives found per anchor; for every training run, the loss, the masked fraction and eval NDCG@10
over steps; when the pairs have known false negatives (data/build_fn_truth.py), contamination against negatives
per anchor for this run's rules and gist_mining.fn_quality's sweep. Then a few anchors as text with their
positive, hard negatives and false negatives, and the held-out table from pipeline.run when there is one.
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from gist_mining import fn_quality, workdir  # noqa: E402
from gist_mining.mask.settings import CHUNK  # noqa: E402
from gist_mining.mining import MiningRules  # noqa: E402
from gist_mining.storage import read_json  # noqa: E402

COLORS = {"positive": "#2a9d8f", "hard negative": "#e9c46a", "false negative": "#e76f51"}


def save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def score_histograms(mined: pl.DataFrame, out: Path, score: str) -> str:
    """Histograms of the scores the rules read (MiningRules.score): the guide's cosines or a cross-encoder's."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    series = {"positive": mined["positive_score"], "hard negative": mined["negative_scores"].explode(),
              "false negative": mined["false_negative_scores"].explode()}
    for label, values in series.items():
        values = values.drop_nulls().to_numpy()
        if len(values):
            ax.hist(values, bins=60, range=(-0.2, 1.0), alpha=0.55, density=True, color=COLORS[label],
                    label=f"{label} ({len(values):,})")
    ax.set(xlabel={"guide": "guide score (cosine)", "rescore": "cross-encoder score, sigmoid(logit)"}[score],
           ylabel="density", title="Guide scores" if score == "guide" else "Cross-encoder scores")
    ax.legend()
    return save(fig, out, "scores.png")


def per_task(mined: pl.DataFrame, out: Path) -> str:
    stats = (mined.group_by("task").agg(pl.col("false_negative_ids").list.len().mean().alias("false negatives"),
                                        pl.col("negative_ids").list.len().mean().alias("hard negatives"))
             .sort("task"))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = range(stats.height)
    ax.bar([i - 0.2 for i in x], stats["false negatives"], width=0.4, color=COLORS["false negative"],
           label="false negatives")
    ax.bar([i + 0.2 for i in x], stats["hard negatives"], width=0.4, color=COLORS["hard negative"],
           label="hard negatives")
    ax.set_xticks(list(x), stats["task"].to_list())
    ax.set(ylabel="per anchor (mean)", title="False and hard negatives per anchor, by task")
    ax.legend()
    return save(fig, out, "per_task.png")


def negatives_found(mined: pl.DataFrame, out: Path) -> str:
    counts = mined["negative_ids"].list.len().value_counts().sort("negative_ids")
    fig, ax = plt.subplots(figsize=(7, 3.0))
    ax.bar(counts["negative_ids"].to_list(), counts["count"].to_list(), color=COLORS["hard negative"])
    ax.set(xlabel="hard negatives found", ylabel="anchors", title="Hard negatives found per anchor")
    return save(fig, out, "negatives_found.png")


def fn_frontier(results: pl.DataFrame, path: Path, highlight: str | None = None) -> str:
    """Contamination against hard negatives per anchor, one numbered point per rule coloured by hardness,
    the Pareto frontier ringed and joined. ``results``: gist_mining.fn_quality.rates by rule. Saved to ``path``.
    """
    shown = results.filter(pl.col("contamination").is_not_nan())
    frontier = fn_quality.pareto_frontier(shown)
    fig, ax = plt.subplots(figsize=(11, 5.2))
    fig.subplots_adjust(left=0.07, right=0.8, bottom=0.11, top=0.92)
    dots = ax.scatter(shown["contamination"], shown["negatives_per_anchor"], c=shown["hardness"], cmap="viridis",
                      s=30, zorder=2)
    ax.step(frontier["contamination"], frontier["negatives_per_anchor"], where="post", color="#c0392b", lw=1, zorder=1)
    ax.scatter(frontier["contamination"], frontier["negatives_per_anchor"], s=150, facecolors="none",
               edgecolors="#c0392b", label="Pareto frontier", zorder=3)
    fig.colorbar(dots, ax=ax, label="hardness: mean (negative - positive) guide score", pad=0.02)
    if highlight is not None:
        own = shown.filter(pl.col("rule") == highlight)  # the work directory's own rule
        ax.scatter(own["contamination"], own["negatives_per_anchor"], marker="x", s=90,
                   color=COLORS["false negative"], label=highlight, zorder=4)
    # Numbers on the points and the names beside the plot: rule names overlap where rules agree.
    for i, row in enumerate(shown.iter_rows(named=True), 1):
        ax.annotate(str(i), (row["contamination"], row["negatives_per_anchor"]), xytext=(3, 4),
                    textcoords="offset points", fontsize=7, weight="bold" if row["rule"] == highlight else "normal")
    names = "\n".join(f"{i:>2}  {rule}" for i, rule in enumerate(shown["rule"], 1))
    fig.text(0.81, 0.92, names, va="top", fontsize=7.5, family="monospace")
    ax.set_xlabel("contamination: chosen negatives that are known false negatives (a lower bound)")
    ax.set_ylabel("hard negatives per anchor")
    ax.set_title("Mining rules against known false negatives")
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def fn_section(work: Path, truth: Path, rules: MiningRules, out: Path) -> str:
    """The frontier plot and table for the sweep plus this run's rules, when the pairs have known false negatives."""
    sweep = {"this run": rules, **fn_quality.default_sweep(rules.num_negatives)}
    results = fn_quality.rates(fn_quality.sweep(fn_quality.candidate_chunks(work, CHUNK), fn_quality.read_truth(truth), sweep),
                               ["rule"])
    image = fn_frontier(results, out / Path(workdir.FN_FRONTIER).name, highlight="this run")
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>"
                   for row in fn_quality.formatted(results, ["rule", *fn_quality.METRICS]))
    header = "".join(f"<th>{name}</th>" for name in ("rule", *fn_quality.METRICS))
    return (f"<h2>False negatives against ground truth</h2><p>{html.escape(str(truth))}: "
            f"{results['anchors'][0]:,} anchors with known false negatives; definitions in gist_mining/fn_quality.py."
            f"</p><img src=\"{image}\" alt=\"contamination frontier\"><table><tr>{header}</tr>{rows}</table>")


def training_curves(runs: dict[str, list[dict]], out: Path) -> str | None:
    if not runs:
        return None
    with_evals = any("eval_ndcg@10" in r for records in runs.values() for r in records)
    fig, axes = plt.subplots(1, 3 if with_evals else 2, figsize=(12 if with_evals else 8.5, 3.4))
    for name, records in runs.items():
        steps = [r for r in records if "loss" in r]
        axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], label=name, alpha=0.8)
        axes[1].plot([r["step"] for r in steps], [r["masked_fraction"] for r in steps], label=name, alpha=0.8)
        if with_evals:
            evals = [r for r in records if "eval_ndcg@10" in r]
            axes[2].plot([r["step"] for r in evals], [r["eval_ndcg@10"] for r in evals], "o-", label=name)
    for ax, title in zip(axes, ("training loss", "masked fraction of logits", "eval NDCG@10")):
        ax.set(title=title, xlabel="step")
        ax.legend()
    return save(fig, out, "training.png")


def training_runs(run_dirs: list[Path], manifest: workdir.MinedManifest) -> dict[str, list[dict]]:
    """Each finished run's metrics; a run trained from other mined tables is left out, and said so."""
    runs = {}
    for folder in run_dirs:
        if workdir.trained_from(folder) != manifest.fingerprint:
            print(f"report: leaving out {folder}: not trained from the current mined tables "
                  f"(or unfinished; see its {workdir.TRAINING_RECORD})", file=sys.stderr)
            continue
        runs[folder.name] = [json.loads(line) for line in (folder / workdir.METRICS).read_text().splitlines()]
    return runs


def examples(work: Path, mined: pl.DataFrame, n: int, seed: int) -> str:
    """A few anchors that have both hard and false negatives, as text."""
    pick = mined.filter((pl.col("false_negative_ids").list.len() > 0) & (pl.col("negative_ids").list.len() > 0))
    pick = pick.sample(min(n, pick.height), seed=seed) if pick.height else pick
    named = pick.select(pl.concat_list("query_id", "positive_id", "negative_ids", "false_negative_ids").explode())
    text_of = dict(workdir.read_texts(work, np.unique(named.to_series().to_numpy())).iter_rows())  # those texts only
    blocks = []
    for row in pick.iter_rows(named=True):
        def items(ids, scores, limit=5):
            shown = "".join(f"<li><span class=score>{s:.3f}</span> {html.escape(text_of[i])}</li>"
                            for i, s in list(zip(ids, scores))[:limit])
            more = f"<li class=more>and {len(ids) - limit} more</li>" if len(ids) > limit else ""
            return f"<ul>{shown}{more}</ul>"
        blocks.append(
            f"<div class=example><div class=task>{html.escape(row['task'])} &middot; anchor {row['anchor_id']}</div>"
            f"<p><b>query</b> {html.escape(text_of[row['query_id']])}</p>"
            f"<p><b>positive</b> <span class=score>{row['positive_score']:.3f}</span> "
            f"{html.escape(text_of[row['positive_id']])} <span class=threshold>(threshold "
            f"{row['threshold']:.3f})</span></p>"
            f"<p class=hn><b>hard negatives</b></p>{items(row['negative_ids'], row['negative_scores'])}"
            f"<p class=fn><b>false negatives (masked)</b></p>"
            f"{items(row['false_negative_ids'], row['false_negative_scores'])}</div>")
    return "\n".join(blocks)


def results_table(work: Path) -> str:
    path = work / workdir.RESULTS
    if not path.exists():
        return ""
    results = read_json(path)["results"]
    rows = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{v:.4f}</td>" for v in scores.values())
                   + "</tr>" for name, scores in results.items())
    header = "".join(f"<th>{html.escape(k)}</th>" for k in next(iter(results.values())))
    return f"<h2>Held-out retrieval</h2><table><tr><th>model</th>{header}</tr>{rows}</table>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
img{max-width:100%} .example{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}
.task{color:#666;font-size:.85em} .score{font-family:monospace;color:#555} .threshold{color:#888}
.hn b{color:#b08900} .fn b{color:#c0392b} ul{margin:.2em 0 .6em} .more{color:#888}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:.3em .8em} .grid{display:flex;gap:1em}"""


def write_report(work: Path, out: Path | None = None, runs: list[Path] = (), n_examples: int = 6, seed: int = 42,
                 truth: Path | None = None) -> Path:
    """The report of ``work`` in ``out`` (default WORK/report): index.html and its PNGs. ``runs``: train.run output
    folders (default: every model under WORK/models); ``truth``: known false negatives (default WORK/fn_truth.parquet
    when present)."""
    work = Path(work)
    manifest = workdir.checked_mined_manifest(work)
    mined = pl.read_parquet(workdir.verified(work, manifest, "mine"))
    out = Path(out) if out else work / workdir.REPORT
    out.mkdir(parents=True, exist_ok=True)
    runs = training_runs(list(runs) or sorted(p.parent for p in (work / workdir.MODELS).glob(f"*/{workdir.METRICS}")), manifest)
    summary = read_json(work / workdir.SUMMARY)
    images = [score_histograms(mined, out, manifest.rules.score), per_task(mined, out), negatives_found(mined, out)]
    curves = training_curves(runs, out)
    truth = fn_quality.truth_path(work, truth)
    fn_html = fn_section(work, truth, manifest.rules, out) if truth else ""
    rules = manifest.rules.described()
    unjudged = ", ".join(f"{task} {v['anchors_the_guide_cannot_judge']:,} of {v['anchors']:,}"
                         for task, v in summary["per_task"].items())
    page = f"""<!doctype html><html><head><meta charset=utf-8><title>gist-mining report: {html.escape(str(work))}</title>
<style>{STYLE}</style></head><body>
<h1>gist-mining report</h1>
<p>{html.escape(str(work))}: {summary['anchors']:,} anchors, {summary['candidates_per_anchor']:.0f} candidates each;
{summary['negatives_per_anchor']:.2f} hard negatives and {summary['false_negatives_per_anchor']:.2f} false negatives
per anchor; {summary['anchors_short_of_negatives']:,} anchors short of {manifest.rules.num_negatives}.
Rules: {html.escape(rules)}.</p>
<p>Anchors the guide cannot judge (it scores the labelled positive below most of the candidates, so a margin
rule flags nearly all of them): {summary['anchors_the_guide_cannot_judge']:,}; by task:
{html.escape(unjudged)}.</p>
{results_table(work)}
<h2>What the guide saw</h2>
<img src="{images[0]}" alt="guide score histograms">
<div class=grid><img src="{images[1]}" alt="negatives per task"><img src="{images[2]}" alt="negatives found"></div>
{fn_html}
{f'<h2>Training</h2><img src="{curves}" alt="training curves">' if curves else ''}
<h2>Examples</h2>
{examples(work, mined, n_examples, seed)}
</body></html>
"""
    (out / "index.html").write_text(page)
    return out / "index.html"
