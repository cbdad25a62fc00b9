"""Run files: the atomic writer (durable rename, ordinary permissions, one-line errors, no
temporary file left behind)."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from tera.errors import UserError
from tera.runs.files import (
    atomic_output,
    check_writable,
    read_json,
    save_torch,
    temporary_files,
    write_json,
    write_text,
)


def test_atomic_write_replaces_the_file_with_ordinary_permissions(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    write_text(path, "one")
    write_text(path, "two")
    assert path.read_text() == "two"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert temporary_files(path.parent) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"value": 1})
    with pytest.raises(RuntimeError), atomic_output(path) as tmp:
        tmp.write_text('{"val')
        raise RuntimeError("killed while writing")
    assert path.read_text() == '{\n  "value": 1\n}\n'
    assert temporary_files(tmp_path) == []


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left on device"),
                                          (errno.EACCES, "permission denied")])
def test_os_errors_while_writing_are_one_line_naming_the_file(tmp_path, code, reason):
    path = tmp_path / "checkpoint_last.pt"
    with pytest.raises(UserError, match=rf"checkpoint_last\.pt: cannot write: {reason}$"):
        with atomic_output(path) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(code, os.strerror(code))
    assert list(tmp_path.iterdir()) == []


def test_a_folder_where_the_file_should_be_is_one_line(tmp_path):
    (tmp_path / "out.npz").mkdir()
    with pytest.raises(UserError, match=r"out\.npz: is a folder"):
        save_torch({"x": 1}, tmp_path / "out.npz")
    with pytest.raises(UserError, match=r"out\.npz: is a folder"):
        check_writable(tmp_path / "out.npz")
    assert temporary_files(tmp_path) == []


def test_a_parent_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file" / "x.npz", tmp_path / "file" / "deeper" / "x.npz"):
        with pytest.raises(UserError, match=r"file is a file, not a folder"):
            write_text(target, "data")
        with pytest.raises(UserError, match=r"file is a file, not a folder"):
            check_writable(target)


# --- checkpoints by step ------------------------------------------------------------------------


def test_checkpoints_are_ordered_by_step_not_by_text(tmp_path):
    from tera.runs.checkpoints import downstream_states, interval_checkpoints, keep_newest

    for name in ("checkpoint_1_10000.pt", "checkpoint_1_9000.pt", "checkpoint_2_500.pt",
                 "checkpoint_best.pt", "checkpoint_last.pt", "states-1000.ckpt",
                 "states-900.ckpt", "states-10000.ckpt", "dev-best.ckpt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in interval_checkpoints(tmp_path)] == [
        "checkpoint_2_500.pt", "checkpoint_1_9000.pt", "checkpoint_1_10000.pt"]
    assert [p.name for p in downstream_states(tmp_path)] == [
        "states-900.ckpt", "states-1000.ckpt", "states-10000.ckpt"]
    removed = keep_newest(downstream_states(tmp_path), 2)
    assert [p.name for p in removed] == ["states-900.ckpt"]
    assert [p.name for p in downstream_states(tmp_path)] == ["states-1000.ckpt",
                                                            "states-10000.ckpt"]
    assert keep_newest(interval_checkpoints(tmp_path), 0) == []  # 0 keeps all


# --- the lock -----------------------------------------------------------------------------------


LOCKER = """
import sys, time
from tera.runs.lock import folder_lock
with folder_lock(sys.argv[1], "tera pretrain"):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_process_on_a_locked_folder_stops_with_one_line(tmp_path):
    import subprocess
    import sys

    first = subprocess.Popen([sys.executable, "-c", LOCKER, str(tmp_path), "60"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "locked"
        from tera.runs.lock import folder_lock

        with pytest.raises(UserError) as caught, folder_lock(tmp_path, "tera pretrain"):
            pass
        message = str(caught.value)
        assert f"in use by process {first.pid} (tera pretrain, started" in message
        assert "\n" not in message
    finally:
        first.kill()
        first.wait()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, capsys):
    import signal
    import subprocess
    import sys

    from tera.runs.lock import folder_lock

    killed = subprocess.Popen([sys.executable, "-c", LOCKER, str(tmp_path), "60"],
                              stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "locked"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    with folder_lock(tmp_path, "tera pretrain"):
        pass
    assert f"taking over the lock of process {killed.pid}" in capsys.readouterr().err
    with folder_lock(tmp_path, "tera pretrain"):  # released properly: nothing to say
        pass
    assert capsys.readouterr().err == ""


# --- overrides ----------------------------------------------------------------------------------


def test_one_typed_override_parser_for_both_commands():
    from omegaconf import OmegaConf

    from tera.runs.overrides import apply_overrides, s3prl_overrides

    cfg = OmegaConf.create({"runner": {"total_steps": 10, "lr": 0.1, "name": "x"},
                            "optimizer": {"betas": [0.9, 0.98]}})
    overrides = s3prl_overrides("config.runner.total_steps=7,,config.runner.lr=1e-4,,"
                                "config.optimizer.betas=[0.8, 0.9]")
    assert overrides == ["runner.total_steps=7", "runner.lr=1e-4", "optimizer.betas=[0.8, 0.9]"]
    apply_overrides(cfg, overrides)
    assert cfg.runner.total_steps == 7 and cfg.runner.lr == 1e-4
    assert list(cfg.optimizer.betas) == [0.8, 0.9]
    with pytest.raises(UserError, match=r"^config key 'runner.total_steps' expects an int, "
                                        r"got 'abc'$"):
        apply_overrides(cfg, ["runner.total_steps=abc"])
    with pytest.raises(UserError, match=r"unknown config key 'runner.total_step'; valid keys "
                                        r"near it: runner.total_steps"):
        apply_overrides(cfg, ["runner.total_step=3"])
    with pytest.raises(UserError, match="not of the form"):
        apply_overrides(cfg, ["runner.total_steps"])


# --- records and the log ------------------------------------------------------------------------


def test_downstream_result_keeps_keys_it_does_not_know(tmp_path):
    from tera.runs.records import DownstreamResult, read_result, write_result

    result = DownstreamResult(task="ks", metric="accuracy", value=0.5, split="test",
                              checkpoint="dev-best.ckpt", upstream="fbank", upstream_ckpt=None,
                              layer_weights=[1.0], step=3, wall_time_s=1.5,
                              extra={"interval": [0.4, 0.6]})
    write_result(tmp_path, result)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved)[:10] == ["task", "metric", "value", "split", "checkpoint", "upstream",
                                "upstream_ckpt", "layer_weights", "step", "wall_time_s"]
    assert saved["interval"] == [0.4, 0.6] and "dev_eer" not in saved
    assert read_result(tmp_path) == result
    (tmp_path / "results.json").write_text('{"task": "ks"}')
    with pytest.raises(UserError, match="results.json: a downstream result lacks metric"):
        read_result(tmp_path)


def test_json_files_that_are_absent_torn_or_not_text_are_one_line_naming_them(tmp_path):
    path = tmp_path / "record.json"
    with pytest.raises(UserError, match=r"record.json: no such file \(has the run finished"):
        read_json(path, "no such file (has the run finished?)")
    write_json(path, {"a": [1, 2]})
    assert read_json(path) == {"a": [1, 2]}
    path.write_text('{"a": [1, ')  # a write cut short
    with pytest.raises(UserError, match="record.json: not valid JSON"):
        read_json(path)
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="record.json: not valid JSON"):
        read_json(path)
    with pytest.raises(UserError, match="cannot read: is a directory"):
        read_json(tmp_path)


def test_training_state_round_trip_and_errors():
    from tera.runs.records import TrainingState

    state = TrainingState(update=5, epoch=1, position=2, preset="tiny", extra={"future": 1})
    assert TrainingState.from_dict(state.to_dict()) == state
    with pytest.raises(UserError, match="ckpt.pt: the training state lacks position"):
        TrainingState.from_dict({"update": 1, "epoch": 0}, "ckpt.pt")


def test_run_log_writes_json_lines_and_skips_a_torn_line(tmp_path):
    from tera.runs.log import RunLog, read_log

    log = RunLog(tmp_path, tensorboard="tb", step_key="step")
    log.write({"step": 1, "loss": 0.5})
    log.write({"step": 2, "loss": 0.25, "best": None}, echo=False)
    log.close()
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # killed while writing
    assert read_log(tmp_path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25,
                                                            "best": None}]
    assert any((tmp_path / "tb").iterdir())
