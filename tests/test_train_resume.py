"""train.run's checkpoints by default: every N steps, every M minutes and at the end, the newest K kept; a rerun of
the same command resumes (bit for bit), a finished run rerun does nothing, another run is refused in one line
unless --overwrite. (The kill -9 test of the same: tests/crash.py, stage train.)"""

from __future__ import annotations

import shutil

import test_train
from conftest import run_stage
from safetensors.torch import load_file
from test_train import COMMON, metrics

from train import run as train_command

mined_work = test_train.mined_work  # its module fixture: the mined tables


def args(mined_work, tiny_model, out, *extra):
    return ["--work", mined_work / "w", "--student", tiny_model, "--out", out, *COMMON, *extra]


def kept(out) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def same_weights(a, b) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(wa[k].dtype == wb[k].dtype and wa[k].equal(wb[k]) for k in wa)


def losses(out) -> list:
    return [{k: v for k, v in m.items() if k != "seconds"} for m in metrics(out)]


def files(out) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}


def test_checkpoints_by_default_at_steps_minutes_and_the_end_newest_kept(mined_work, tiny_model, tmp_path):
    assert run_stage(train_command, *args(mined_work, tiny_model, tmp_path / "default", "--max-steps", 3)) == 0
    assert kept(tmp_path / "default") == ["step-0000003"]  # the default: every 500 steps or 30 minutes, and the end
    assert run_stage(train_command, *args(mined_work, tiny_model, tmp_path / "k2", "--max-steps", 7,
                                          "--save-steps", 2)) == 0
    assert kept(tmp_path / "k2") == ["step-0000006", "step-0000007"]  # of 2, 4, 6 and 7 the newest two
    assert run_stage(train_command, *args(mined_work, tiny_model, tmp_path / "all", "--max-steps", 7,
                                          "--save-steps", 2, "--keep-checkpoints", 0)) == 0
    assert kept(tmp_path / "all") == ["step-0000002", "step-0000004", "step-0000006", "step-0000007"]
    assert run_stage(train_command, *args(mined_work, tiny_model, tmp_path / "minutes", "--max-steps", 3,
                                          "--save-steps", 0, "--save-minutes", 1e-9, "--keep-checkpoints", 0)) == 0
    assert kept(tmp_path / "minutes") == ["step-0000001", "step-0000002", "step-0000003"]
    # the kept checkpoint of the end holds the final model
    assert same_weights(tmp_path / "k2", tmp_path / "k2" / "checkpoints" / "step-0000007")


def test_a_run_killed_before_removing_old_checkpoints_removes_them_when_rerun(mined_work, tiny_model, tmp_path):
    """Killed between its last checkpoint and the removal of the older ones: the rerun resumes at the end, and keeps
    the newest --keep-checkpoints, as the uninterrupted run does."""
    every = tmp_path / "every"
    assert run_stage(train_command, *args(mined_work, tiny_model, every, "--max-steps", 4, "--save-steps", 1,
                                          "--keep-checkpoints", 0)) == 0
    cut = tmp_path / "cut"
    for step in ("step-0000002", "step-0000003", "step-0000004"):  # step 4 written, step 2 not yet removed
        shutil.copytree(every / "checkpoints" / step, cut / "checkpoints" / step)
    assert run_stage(train_command, *args(mined_work, tiny_model, cut, "--max-steps", 4, "--save-steps", 1)) == 0
    assert kept(cut) == ["step-0000003", "step-0000004"]
    assert same_weights(cut, every)


def test_a_rerun_resumes_bit_for_bit_and_a_finished_run_is_left_alone(mined_work, tiny_model, tmp_path, capsys):
    command = ("--max-steps", 6, "--save-steps", 2, "--keep-checkpoints", 0)
    whole = tmp_path / "whole"
    assert run_stage(train_command, *args(mined_work, tiny_model, whole, *command)) == 0
    # interrupted after step 4's checkpoint, with a log that went further: the same command, no --resume
    cut = tmp_path / "cut"
    for step in ("step-0000002", "step-0000004"):
        shutil.copytree(whole / "checkpoints" / step, cut / "checkpoints" / step)
    (cut / "metrics.jsonl").write_text("".join((whole / "metrics.jsonl").read_text().splitlines(keepends=True)[:5]))
    capsys.readouterr()
    assert run_stage(train_command, *args(mined_work, tiny_model, cut, *command)) == 0
    assert f"resuming from {cut / 'checkpoints' / 'step-0000004'} at step 4" in capsys.readouterr().err
    assert losses(cut) == losses(whole) and len(losses(whole)) == 6
    assert same_weights(cut, whole) and kept(cut) == kept(whole)
    assert all(same_weights(cut / "checkpoints" / step, whole / "checkpoints" / step) for step in kept(whole))

    # done: the same command (or one that differs only in how it saves) changes nothing and says so
    before = files(whole)
    assert run_stage(train_command, *args(mined_work, tiny_model, whole, *command)) == 0
    assert run_stage(train_command, *args(mined_work, tiny_model, whole, *command, "--save-steps", 1, "--resume")) == 0
    assert capsys.readouterr().err.count(f"train: {whole} is complete (6 steps, from the same mined tables and "
                                         "settings); nothing to do") == 2
    assert files(whole) == before


def test_another_run_is_refused_in_one_line_and_overwrite_starts_over(mined_work, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_stage(train_command, *args(mined_work, tiny_model, out, "--max-steps", 3, "--save-steps", 1)) == 0
    before = files(out)
    capsys.readouterr()
    assert run_stage(train_command, *args(mined_work, tiny_model, out, "--max-steps", 3, "--lr", 2e-3)) == 2
    refusal = (f"error: {out} holds a training run with another --lr (0.001 there, 0.002 now); pass --overwrite to "
               "start over (it removes that run's checkpoints, metrics and record), or use another --out")
    assert capsys.readouterr().err.splitlines() == [refusal]
    assert files(out) == before
    # unfinished (checkpoints, no record): its checkpoints' settings are compared the same way
    (out / "gist_training.json").unlink()
    assert run_stage(train_command, *args(mined_work, tiny_model, out, "--max-steps", 4)) == 2
    assert "another --max-steps (3 there, 4 now); pass --overwrite" in capsys.readouterr().err

    assert run_stage(train_command, *args(mined_work, tiny_model, out, "--max-steps", 3, "--lr", 2e-3,
                                          "--overwrite")) == 0
    assert f"train: --overwrite: removed the run in {out} made with another --lr" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert run_stage(train_command, *args(mined_work, tiny_model, fresh, "--max-steps", 3, "--lr", 2e-3)) == 0
    assert same_weights(out, fresh) and losses(out) == losses(fresh) and kept(out) == kept(fresh) == ["step-0000003"]


def test_a_refusal_names_the_mined_tables_processes_and_settings_that_differ():
    from gist_mining.training.checkpoints import differences, run_identity
    from gist_mining.training.config import TrainConfig

    old = run_identity(TrainConfig(lr=1e-3), "a", world=1)
    assert differences(old, old) == []
    assert differences(old, run_identity(TrainConfig(lr=1e-3), "b", world=2)) == [
        "mined tables", "number of processes (1 there, 2 now)"]
    assert differences(old, run_identity(TrainConfig(lr=2e-3, seed=7, eval_steps=5, save_steps=9), "a")) == [
        "--lr (0.001 there, 0.002 now)", "--seed (42 there, 7 now)"]  # how often to evaluate or save is no difference
    assert differences(None, old) == ["an unknown run (no record of its settings)"]
