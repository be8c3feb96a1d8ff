"""Build a ground-truth false-negative set from WordNet polysemy.

    apt-get install wordnet-base && python data/build_fn_truth.py --out data/fn_truth

Each pair is one polysemous lemma and the gloss of one of its senses, drawn at random:

    query "bank"  ->  positive "sloping land (especially the slope beside a body of water)"

The lemma's other senses' glosses ("a financial institution that accepts deposits ...", "a flight
maneuver; aircraft tips laterally ...") are KNOWN false negatives of that pair.

Why the truth is truth. The query is the bare word, with nothing that picks a sense, so a definition of
any of its senses answers it as well as the labelled positive does: WordNet itself lists the word in
each of those synsets. Mined as a hard negative, such a gloss would teach the student that a correct
definition of "bank" is irrelevant to "bank". (Usage examples as queries would not do: an example picks
one sense, so the other senses' glosses are genuine negatives for it; they are left out for that reason.)
Lemmas are matched case-insensitively over every part of speech, as a lower-case query would be:
"march" the month and "march" the walk are both answers to "march".

Where it undercounts. Only same-lemma senses are labelled. Glosses that answer the query without listing
the lemma are unlabelled false negatives in the corpus: near-synonyms and hyponyms in other synsets
("bank building" defines a bank), derived forms ("banking"), senses WordNet does not list. So a measured
contamination is a lower bound on the true one, and a measured recall counts only these pairs.

Which lemmas: those with 2 to --max-senses distinct glosses (a cap, so that a handful of words like
"break" with 60 senses do not dominate; for a chosen lemma every sense is present and labelled). Every
sense gloss of every chosen lemma goes into the corpus, so each known false negative can be found; so do
--distractors glosses of synsets that list none of the chosen lemmas. Writes:

  pairs.parquet   query, positive, task ("wordnet-lemma"); one pair per lemma, usable as --input
  corpus.parquet  text: every gloss, usable as --corpus
  truth.parquet   query, positive, query_id, positive_id (gist_mining.workdir.text_id of the texts), and
                  false_negative_ids: the text ids of the known false negatives, all in the corpus
  LICENSE-WordNet.txt
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))  # build_sample, beside this file
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # gist_mining
from build_sample import WORDNET_NOTICE, read_synsets  # noqa: E402

from gist_mining.workdir import text_id  # noqa: E402

TASK = "wordnet-lemma"


def senses_by_lemma(synsets: list[dict]) -> dict[str, list[str]]:
    """Lower-cased lemma -> the distinct glosses of every synset that lists it, in file order."""
    senses: dict[str, dict[str, None]] = {}
    for synset in synsets:
        for lemma in {lemma.lower() for lemma in synset["lemmas"]}:
            senses.setdefault(lemma, {})[synset["gloss"]] = None
    return {lemma: list(glosses) for lemma, glosses in senses.items()}


def build(synsets: list[dict], n_lemmas: int, n_distractors: int, max_senses: int, seed: int) -> dict:
    """The pairs, corpus and truth frames (see the module docstring), drawn with ``seed``."""
    rng = random.Random(seed)
    senses = senses_by_lemma(synsets)
    polysemous = sorted(lemma for lemma, glosses in senses.items() if 2 <= len(glosses) <= max_senses)
    lemmas = sorted(rng.sample(polysemous, min(n_lemmas, len(polysemous))))
    rows = []
    for lemma in lemmas:
        positive = rng.choice(senses[lemma])
        others = [gloss for gloss in senses[lemma] if gloss != positive]
        rows.append({"query": lemma, "positive": positive, "query_id": text_id(lemma), "positive_id": text_id(positive),
                     "false_negative_ids": [text_id(gloss) for gloss in others]})
    chosen = set(lemmas)
    sense_glosses = list(dict.fromkeys(gloss for lemma in lemmas for gloss in senses[lemma]))
    # Distractors list no chosen lemma, so no gloss in the corpus is a same-lemma sense left unlabelled.
    taken = set(sense_glosses)
    unrelated = list(dict.fromkeys(s["gloss"] for s in synsets
                                   if not chosen & {x.lower() for x in s["lemmas"]} and s["gloss"] not in taken))
    distractors = rng.sample(unrelated, min(n_distractors, len(unrelated)))
    truth = pl.DataFrame(rows, schema={"query": pl.String, "positive": pl.String, "query_id": pl.Int64,
                                       "positive_id": pl.Int64, "false_negative_ids": pl.List(pl.Int64)})
    return {"pairs": truth.select("query", "positive", pl.lit(TASK).alias("task")),
            "corpus": pl.DataFrame({"text": sense_glosses + distractors}),
            "truth": truth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "fn_truth")
    parser.add_argument("--lemmas", type=int, default=2500, help="pairs: one per polysemous lemma")
    parser.add_argument("--distractors", type=int, default=1500, help="glosses of synsets listing no chosen lemma")
    parser.add_argument("--max-senses", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    frames = build(read_synsets(), args.lemmas, args.distractors, args.max_senses, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.write_parquet(args.out / f"{name}.parquet", compression="zstd", compression_level=19)
    shutil.copy(WORDNET_NOTICE, args.out / "LICENSE-WordNet.txt")
    truth = frames["truth"]
    print(f"{truth.height} pairs, {frames['corpus'].height} corpus glosses, "
          f"{truth['false_negative_ids'].list.len().sum()} known false negatives "
          f"({truth['false_negative_ids'].list.len().mean():.2f} per pair)")


if __name__ == "__main__":
    main()
