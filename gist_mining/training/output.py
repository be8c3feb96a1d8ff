"""What a finished run leaves in its output folder: the model, its card, and gist_training.json (written last:
its presence says the model beside it is complete)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from gist_mining import cli, workdir
from gist_mining.settings import to_argv
from gist_mining.storage import write_json_atomic
from gist_mining.training import card
from gist_mining.training.config import TrainConfig, as_record


def save_files(model, path: Path) -> None:
    """A fast tokenizer keeps its last call's padding and truncation, and saves them in tokenizer.json: reset
    them, so that what is saved does not depend on whether a batch was tokenized first (a resumed run)."""
    backend = getattr(getattr(model[0], "tokenizer", None), "_tokenizer", None)
    if backend is not None:
        backend.no_padding()
        backend.no_truncation()
    model.save(str(path))


def save_model(config: TrainConfig, work: Path, out: Path, model, manifest: workdir.MinedManifest, step: int, world: int, before, after,
               identity: dict | None = None) -> None:
    """``identity``: what a rerun must share to find this run done (checkpoints.run_identity)."""
    save_files(model, out)
    settings = dict(as_record(config), work=str(work), out=str(out))
    record = workdir.TrainingRecord(settings=settings, identity=identity, steps=step, world_size=world,
                                    mined_fingerprint=manifest.fingerprint, embed_fingerprint=manifest.embed_fingerprint,
                                    mining_rules=manifest.rules, eval_before=before, eval_after=after)
    command = cli.command("train.run", ["--work", work, "--out", out, "--student", config.student.name,
                                        *to_argv(config.student), *to_argv(config.prompts),
                                        # a resumed run's card is the same
                                        *to_argv(replace(config, resume=False, overwrite=False))])
    card.write(out, record, work, command)  # over the card sentence-transformers' save wrote
    write_json_atomic(record.to_json(), out / workdir.TRAINING_RECORD)
    if after:
        print(f"eval after training:  {after}", file=sys.stderr)
