"""train.run's features for real runs: --report-to, --matryoshka-dims, the model card, --push-to-hub."""

from __future__ import annotations

import json

import polars as pl
import pytest
from conftest import eval_split, run_stage
from test_st import student, work  # noqa: F401 (the fixtures)

from gist_mining.training.config import TrainConfig
from gist_mining.training.data import TrainingData
from gist_mining.training.loop import epoch_batches
from train import run as train_command

COMMON = ["--batch-size", 8, "--lr", 1e-3, "--seed", 3, "--negatives-in-batch", 1]


@pytest.fixture(scope="module")
def split(work, tmp_path_factory):
    """A small retrieval split of the same kind of text as the work directory's."""
    return eval_split(tmp_path_factory.mktemp("split"), pl.read_parquet(work.parent / "pairs.parquet").head(20))


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_matryoshka_report_to_tensorboard_and_model_card(work, split, student, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_st import collate

    from gist_mining.st import StoredGuideGISTLoss, mined_dataset

    out = tmp_path / "model"
    assert run_stage(train_command, "--work", work, "--out", out, "--student", student, "--max-steps", 3, *COMMON,
                     "--matryoshka-dims", "16,32,8", "--eval", split, "--report-to", "tensorboard") == 0
    logged = metrics(out)
    steps, evals = [m for m in logged if "loss" in m], [m for m in logged if "eval_ndcg@10" in m]

    # the first step's loss: sentence-transformers' MatryoshkaLoss over the stored-guide loss, same anchors
    data = TrainingData(work, 1, "cpu")
    config = TrainConfig(batch_size=8, seed=3)
    first = [int(a) for a in data.rows.every("anchor_id")[0][epoch_batches(data, config, 1, 0)[0]]]
    dataset = mined_dataset(work, 1, short="drop")
    position = {label[0]: i for i, label in enumerate(dataset["label"])}
    model = SentenceTransformer(str(student), device="cpu")
    features, labels = collate(model, dataset.select([position[a] for a in first]))
    expected = MatryoshkaLoss(model, StoredGuideGISTLoss(model, work), [32, 16, 8])(features, labels)
    assert steps[0]["loss"] == pytest.approx(expected.item(), rel=1e-4)

    # evaluation at every size, before and after
    assert [m["step"] for m in evals] == [0, 3]
    assert all(0 <= m[f"eval_{key}"] <= 1 for m in evals for key in ("ndcg@10", "dim16_ndcg@10", "dim8_ndcg@10"))
    assert "eval_dim32_ndcg@10" not in evals[0]  # the whole embedding is the plain one

    # TensorBoard holds what metrics.jsonl holds
    (event_file,) = out.glob("runs/*/events.out.tfevents.*")
    events = EventAccumulator(str(event_file))
    events.Reload()
    for tag, key, rows in (("train/loss", "loss", steps), ("train/masked_fraction", "masked_fraction", steps),
                           ("train/learning_rate", "lr", steps), ("eval/dim8_ndcg@10", "eval_dim8_ndcg@10", evals)):
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars(tag)] == [(m["step"], m[key])
                                                                                            for m in rows]

    # the model card: the facts of the run, from its record and the work directory
    card = (out / "README.md").read_text()
    record = json.loads((out / "gist_training.json").read_text())
    assert card.startswith("---\nlibrary_name: sentence-transformers\n") and f"base_model: {student}" in card
    assert str(work.parent / "pairs.parquet") in card and "64 anchors" in card and str(work) not in card.split("## Command")[0]
    assert "`margin` -0.2" in card and "absolute" in card and "[32, 16, 8]" in card
    after = record["eval_after"]
    assert f"| after | {' | '.join(str(v) for _, v in sorted(after.items()))} |" in card
    assert record["mined_fingerprint"] in card and "--matryoshka-dims 32,16,8" in card


def test_report_to_a_missing_library_and_push_offline_are_one_line_errors(work, split, student, tmp_path, capsys):
    base = ["--work", work, "--student", student, "--max-steps", 1, *COMMON]
    assert run_stage(train_command, *base, "--out", tmp_path / "a", "--push-to-hub", "someone/model") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HF_HUB_OFFLINE" in err[0] and not (tmp_path / "a").exists()
    pytest.importorskip("tensorboard")
    try:
        import wandb  # noqa: F401
    except ImportError:
        assert run_stage(train_command, *base, "--out", tmp_path / "b", "--report-to", "wandb") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pip install wandb" in err[-1]


def test_push_to_hub_uploads_the_output_folder(work, split, student, tmp_path, monkeypatch):
    """Against a local stand-in for the Hub's HTTP API: the repository is created and the folder uploaded."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from huggingface_hub import constants

    seen = []

    class Hub(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append((self.path, body))
            hub = f"http://127.0.0.1:{self.server.server_port}"
            reply = {"url": f"{hub}/someone/model", "commitUrl": f"{hub}/someone/model/commit/{'1' * 40}",
                     "commitOid": "1" * 40, "name": "model", "id": "someone/model"}
            if self.path.endswith("/preupload/main"):
                paths = [f["path"] for f in json.loads(body)["files"]]
                reply = {"files": [{"path": p, "uploadMode": "regular", "shouldIgnore": False} for p in paths]}
            payload = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    out = tmp_path / "model"
    try:
        assert run_stage(train_command, "--work", work, "--out", out, "--student", student, "--max-steps", 1, *COMMON,
                         "--push-to-hub", "someone/model") == 0
    finally:
        server.shutdown()
    paths = [p for p, _ in seen]
    assert paths[0] == "/api/repos/create" and any(p.endswith("/commit/main") for p in paths)
    committed = b"".join(body for p, body in seen if p.endswith("/commit/main"))
    for name in ("README.md", "gist_training.json", "model.safetensors"):
        assert name.encode() in committed
    assert b"checkpoints/" not in committed
