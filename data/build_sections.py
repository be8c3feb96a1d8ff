"""Build a classification-style pair set from Debian package descriptions grouped by archive section.

    python data/build_sections.py --out data/sections        # reads `apt-cache dumpavail` (bookworm here)

MEDI style, as in GISTEmbed's classification training triplets: the query is one package's short
description ("Real-time strategy game of ancient warfare"), the positive another package's description from
the same section (`games`). The label is the section, so every other text in a training batch whose package
shares the anchor's section is a false negative by construction (20 sections: about 5 of the 95 other
texts of a batch of 32 anchors with one mined negative each).

Packages are split by source package before sampling (packages built from one source describe the same
software), into train, `val/` and `test/`. The retrieval splits follow data/sample: `queries.parquet`
(query_id, text, task), `corpus.parquet` (doc_id, text, plus the section), `qrels.parquet` (query_id, doc_id,
score): a held-out package's description retrieves the held-out packages of its section. `train.parquet`
has query, positive, task and the shared `section`; `corpus.parquet` more train-split descriptions
(negatives only). Descriptions that repeat (case-insensitively) and transitional, dummy and debug-symbol
packages are left out.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import zlib
from collections import defaultdict
from pathlib import Path

import polars as pl

SECTIONS = ("admin", "database", "devel", "editors", "electronics", "fonts", "games", "graphics", "hamradio",
            "mail", "math", "net", "perl", "python", "science", "sound", "text", "video", "web", "x11")
TASK = "debian-section"
SKIP = re.compile(r"transitional|dummy|debug symbols", re.IGNORECASE)
NOTICE = """Package descriptions in these files are the short descriptions of Debian {release} (main) packages,
taken from the archive's Packages index with `apt-cache dumpavail`. Each description is the work of its
package's maintainers and upstream authors; Debian publishes them freely as part of its archive metadata
(https://www.debian.org/legal/licenses/, https://www.debian.org/social_contract). Redistributed here
unchanged, with this notice, as a research data set; the section labels are Debian's.
"""


def read_packages() -> list[dict]:
    """One record per package in a listed section: name, source, section, description."""
    text = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    packages, seen = [], set()
    for stanza in text.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): (.*)$", stanza, flags=re.MULTILINE))
        section = fields.get("Section", "").split("/")[-1]
        description = fields.get("Description", "").strip()
        if section not in SECTIONS or len(description) < 12 or SKIP.search(description):
            continue
        if description.lower() in seen:
            continue
        seen.add(description.lower())
        source = fields.get("Source", fields["Package"]).split()[0]
        packages.append({"package": fields["Package"], "source": source, "section": section, "text": description})
    return packages


def split_of(source: str, seed: int) -> str:
    """Train 80%, val 7%, test 13%, by a hash of the source package, so its binaries stay together."""
    bucket = zlib.crc32(f"{seed}:{source}".encode()) % 100
    return "test" if bucket < 13 else "val" if bucket < 20 else "train"


def shuffled(by_section: dict[str, list[dict]], rng: random.Random):
    """Each section and a seeded shuffle of its descriptions (a copy), in section order."""
    for section in SECTIONS:
        items = by_section[section][:]
        rng.shuffle(items)
        yield section, items


def train_pairs(by_section: dict[str, list[dict]], per_section: int, rng: random.Random) -> tuple[list, list]:
    """Per section, disjoint packages paired as (query, positive); the rest of the descriptions go to the corpus."""
    rows, rest = [], []
    for section, items in shuffled(by_section, rng):
        n = min(per_section, len(items) // 2)
        rows += [{"query": a["text"], "positive": b["text"], "task": TASK, "section": section}
                 for a, b in zip(items[:n], items[n: 2 * n])]
        rest += items[2 * n:]
    rng.shuffle(rows)
    return rows, rest


def write_retrieval(by_section: dict[str, list[dict]], n_queries: int, n_docs: int, rng: random.Random,
                    out: Path) -> None:
    """Per section, n_queries held-out descriptions as queries and n_docs others as the relevant documents."""
    queries, docs = [], []
    for section, items in shuffled(by_section, rng):
        queries += [(item["text"], section) for item in items[:n_queries]]
        docs += [(item["text"], section) for item in items[n_queries: n_queries + n_docs]]
    out.mkdir(parents=True, exist_ok=True)
    q = pl.DataFrame(queries, schema=["text", "section"], orient="row").with_row_index("n").select(
        pl.format("q{}", "n").alias("query_id"), "text", pl.lit(TASK).alias("task"), "section")
    d = pl.DataFrame(docs, schema=["text", "section"], orient="row").with_row_index("n").select(
        pl.format("d{}", "n").alias("doc_id"), "text", "section")
    qrels = q.join(d, on="section").select("query_id", "doc_id", pl.lit(1).alias("score")).sort("query_id", "doc_id")
    q.drop("section").write_parquet(out / "queries.parquet")
    d.write_parquet(out / "corpus.parquet")
    qrels.write_parquet(out / "qrels.parquet")
    print(out.name, f"{q.height} queries, {d.height} documents, {qrels.height} relevant pairs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "sections", help="output folder")
    parser.add_argument("--pairs-per-section", type=int, default=100, help="train pairs per section (at most)")
    parser.add_argument("--extra-corpus", type=int, default=1000, help="train-split descriptions in corpus.parquet")
    parser.add_argument("--seed", type=int, default=7, help="seeds the split by source package and the sampling")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    splits: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for package in read_packages():
        splits[split_of(package["source"], args.seed)][package["section"]].append(package)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, rest = train_pairs(splits["train"], args.pairs_per_section, rng)
    pl.DataFrame(rows).write_parquet(args.out / "train.parquet")
    rng.shuffle(rest)
    pl.DataFrame({"text": [r["text"] for r in rest[: args.extra_corpus]],
                  "section": [r["section"] for r in rest[: args.extra_corpus]]}).write_parquet(args.out / "corpus.parquet")
    print("train", len(rows), "pairs;", pl.DataFrame(rows).group_by("section").len().sort("len")["len"].to_list())
    write_retrieval(splits["val"], 5, 40, rng, args.out / "val")
    write_retrieval(splits["test"], 10, 40, rng, args.out / "test")
    release = subprocess.run(["sh", "-c", ". /etc/os-release && echo $VERSION_CODENAME"], capture_output=True,
                             text=True).stdout.strip()
    (args.out / "NOTICE-Debian.txt").write_text(NOTICE.format(release=release or "(unknown release)"))


if __name__ == "__main__":
    main()
