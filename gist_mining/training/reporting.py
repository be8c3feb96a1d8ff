"""Where train.run's figures go: metrics.jsonl (``Log``), and TensorBoard, Weights & Biases, MLflow or trackio through
transformers' own integration callbacks (the ones ``Trainer(report_to=...)`` uses; ``Reporter``), so each service
gets what it gets from a Trainer run: run set-up, the settings, one point per logged value and step, the end of
the run."""

from __future__ import annotations

import json
from pathlib import Path

from gist_mining import workdir
from gist_mining.errors import UsageError
from gist_mining.storage import write_bytes_atomic

REPORT_TO = ("none", "tensorboard", "wandb", "mlflow", "trackio")
# train.run's metrics.jsonl names where the Trainer's differ (TensorBoard shows train/learning_rate either way)
TRAINER_NAMES = {"lr": "learning_rate"}


class Reporter:
    """Sends each metrics.jsonl record to the services in ``report_to``; on every rank (the callbacks report on
    the world's process zero only, as under a Trainer). ``settings`` fill the TrainingArguments the services log
    as the run's parameters."""

    def __init__(self, report_to: str, out: Path, rank: int, settings: dict):
        from transformers import TrainerControl, TrainerState, TrainingArguments
        from transformers.integrations import get_reporting_integration_callbacks

        if report_to not in REPORT_TO:
            raise UsageError(f"--report-to must be one of {', '.join(REPORT_TO)}, not {report_to!r}")
        self.callbacks = []
        for callback in get_reporting_integration_callbacks(report_to):
            try:
                self.callbacks.append(callback())
            except (ImportError, RuntimeError) as missing:  # the integration's library is not installed
                raise UsageError(f"--report-to {report_to}: {str(missing).splitlines()[0]}")
        if not self.callbacks:
            return
        self.args = TrainingArguments(str(out), report_to=[report_to], run_name=Path(out).name, **settings)
        self.state = TrainerState(is_local_process_zero=rank == 0, is_world_process_zero=rank == 0)
        self.control = TrainerControl()
        self._call("on_train_begin")

    def log(self, record: dict) -> None:
        if not self.callbacks:
            return
        self.state.global_step = record["step"]
        logs = {TRAINER_NAMES.get(k, k): v for k, v in record.items() if k != "step"}
        self.state.log_history.append(dict(logs, step=record["step"]))
        self._call("on_log", logs=logs)

    def close(self) -> None:
        if self.callbacks:
            self._call("on_train_end")

    def _call(self, event: str, **kwargs) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self.args, self.state, self.control, **kwargs)


class Log:
    """metrics.jsonl, one JSON line per step or evaluation, written by rank 0. A fresh run starts it anew; a
    resumed one keeps what came up to its checkpoint, less a line cut short by a kill."""

    def __init__(self, out: Path, step: int, rank: int, reporter: Reporter | None = None):
        self.reporter = reporter  # --report-to: every record goes there too, from every rank (it reports on rank 0)
        self.path = out / workdir.METRICS if rank == 0 else None
        if self.path is None:
            return
        kept = []
        for line in self.path.read_text().splitlines() if step and self.path.exists() else []:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except ValueError:
                pass
        write_bytes_atomic("".join(line + "\n" for line in kept).encode(), self.path)

    def write(self, record: dict) -> None:
        if self.reporter is not None:
            self.reporter.log(record)
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
