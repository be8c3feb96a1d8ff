"""The model card train.run writes beside the model (README.md, where sentence-transformers' trainer writes its own):
what the model was trained from and how, each fact read from the work directory's manifests and the run's record,
so that the card says what the run did and nothing it did not."""

from __future__ import annotations

import json
from pathlib import Path

from gist_mining import workdir
from gist_mining.storage import read_json, write_bytes_atomic

CARD = "README.md"


def render(record: workdir.TrainingRecord, work: Path, command: str) -> str:
    """The card's Markdown from gist_training.json's ``record``, the work directory's manifests and the command."""
    settings = record.settings
    embedded = workdir.EmbedManifest.from_json(read_json(Path(work) / workdir.EMBED_MANIFEST))
    summary_path = Path(work) / workdir.SUMMARY
    summary = read_json(summary_path) if summary_path.exists() else {}
    guide = embedded.model
    student = settings["student"]["name"]
    inputs = "\n".join(f"- `{i['path']}` ({i['kind']}, sha256 `{i['sha256'][:12]}`)" for i in embedded.inputs)
    counts = ", ".join(f"{v} {k}" for k, v in embedded.counts.items())
    mined = ", ".join(f"{k} {v}" for k, v in summary.items() if isinstance(v, (int, float)) and k != "k")
    rules = ", ".join(f"`{k}` {v}" for k, v in sorted(record.mining_rules.as_dict().items()) if v is not None)
    in_batch = (f"GISTEmbed's guided in-batch loss (arXiv 2402.16829) from the guide's stored vectors: an in-batch "
                f"candidate is masked when the guide scores it above the anchor's positive by the "
                f"`{settings['in_batch_margin_strategy']}` rule with margin {settings['in_batch_margin']}, when mining "
                f"flagged it as the anchor's false negative, or when it is the anchor's own text; guide filter "
                f"`{settings['guide_filter']}`, temperature {settings['temperature']}")
    if settings.get("matryoshka_dims"):
        in_batch += f"; summed over the embeddings cut to {settings['matryoshka_dims']} (Matryoshka, arXiv 2205.13147)"
    trained = {k: v for k, v in settings.items() if k not in ("student", "prompts", "work", "out")}
    tags = ["sentence-transformers", "sentence-similarity", "feature-extraction", "gist-mining", "gistembed"]
    return f"""---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
base_model: {student}
tags:
{chr(10).join(f"- {t}" for t in tags)}
---

# {Path(settings['out']).name}

A sentence-transformers model fine-tuned from `{student}` with gist-mining on hard negatives mined offline
by the guide `{guide.get('name', '?')}`, {record.steps} steps on {record.world_size} process(es).

## Data

{inputs}

Embedded: {counts}. Mined: {mined or 'see mined_summary.json'}.

## Mining rules

{rules}

## In-batch rule

{in_batch}.

## Training settings

```json
{json.dumps(trained, indent=2)}
```

Student prompts: `{json.dumps(settings["prompts"])}`.

## Evaluation

| | {' | '.join(sorted(record.eval_after or {}))} |
|---|{'---|' * len(record.eval_after or {})}
| before | {' | '.join(str((record.eval_before or {}).get(k, '')) for k in sorted(record.eval_after or {}))} |
| after | {' | '.join(str(v) for _, v in sorted((record.eval_after or {}).items()))} |

{'' if record.eval_after else 'No held-out split was given (--eval).'}

## Command

```
{command}
```

Fingerprints: mined `{record.mined_fingerprint}`, embeddings `{record.embed_fingerprint}`.
"""


def write(out: Path, record: workdir.TrainingRecord, work: Path, command: str) -> None:
    write_bytes_atomic(render(record, work, command).encode(), Path(out) / CARD)
