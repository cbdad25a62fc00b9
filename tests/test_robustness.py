"""Every mistake one line: bad values, bad files, crafted checkpoints, a full disk, a run
that cannot start, each through the `tera` command line.

Each case asserts exit status 2 (130 / 143 for signals), at most two lines on stderr, the
key or file named, no traceback, and, where the case could destroy something, that it did
not. Inputs are tiny and nothing trains.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tera.cli import main

from . import crafted
from .paths import COMPAT, FLAC, REPO

S3PRL = COMPAT / "tera2_s3prl_converted.pt"


@dataclass
class Case:
    argv: list[str]  # "{tmp}" is the case's folder
    named: list[str]  # what the one line must say (the key, the file, the value)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "{tmp}"


def _pretrain(*overrides: str) -> list[str]:
    return ["pretrain", "--config-name", "tiny", "task.data={tmp}/data",
            "checkpoint.save_dir={tmp}/run", *overrides]


def _downstream(*args: str) -> list[str]:
    """KS on a folder that is not the embedded corpus (the real recipe): nothing is read."""
    return ["downstream", "-d", "ks", "-u", "fbank", "-p", "{tmp}/ds", "--data-root",
            "{tmp}/data", *args]


CASES = {
    # data loss: nothing tera-speech did not write is deleted or overwritten
    "synth into a user's folder": Case(
        ["corpus", "synth", "{tmp}/user", "--preset", "small"],
        ["user: holds files that are not a tera-speech corpus"]),
    "synth into the working folder": Case(
        ["corpus", "synth", ".", "--preset", "small"], [".: is the working folder"],
        cwd="{tmp}/user"),
    "synth into a parent of it": Case(
        ["corpus", "synth", "..", "--preset", "small"], ["..: is the working folder"],
        cwd="{tmp}/user"),
    "synth over a file": Case(["corpus", "synth", "{tmp}/user/keep.txt"], ["keep.txt: is a file"]),
    "synth with a negative seed": Case(
        ["corpus", "synth", "{tmp}/new", "--seed", "-1"], ["corpus seed", "-1"]),
    "extract over its input": Case(
        ["extract", "-u", "fbank", "{tmp}/v.flac", "-o", "{tmp}/v.flac"],
        ["v.flac: -o names the input"]),
    "convert over its input": Case(
        ["convert", "{tmp}/ck.pt", "{tmp}/ck.pt", "--to", "s3prl"], ["ck.pt: DST names the input"]),
    # values out of range or of the wrong type
    "extract chunk inf": Case(
        ["extract", "-u", "fbank", "{tmp}/v.flac", "--chunk-seconds", "inf", "-o", "{tmp}/o.npz"],
        ["--chunk-seconds inf"]),
    "extract context nan": Case(
        ["extract", "-u", "fbank", "{tmp}/v.flac", "--context-seconds", "nan", "-o",
         "{tmp}/o.npz"], ["--context-seconds nan"]),
    "plan fraction 1e300": Case(
        ["plan", "--config-name", "tiny", "--fraction", "1e300"], ["--fraction 1e+300"]),
    "lr -1": Case(_pretrain("optimization.lr=-1"), ["optimization.lr=-1.0", "at least 0"]),
    "lr nan": Case(_pretrain("optimization.lr=nan"), ["optimization.lr=nan", "finite"]),
    "one adam beta": Case(_pretrain("optimizer.adam_betas=[0.9]"),
                          ["optimizer.adam_betas=[0.9]", "two numbers"]),
    "betas as a tuple": Case(_pretrain("optimizer.adam_betas=(0.9,)"),
                             ["'optimizer.adam_betas' expects a list"]),
    "num_workers -1": Case(_pretrain("dataset.num_workers=-1"), ["dataset.num_workers=-1"]),
    "bogus target_norm": Case(_pretrain("criterion.target_norm=bogus"),
                              ["criterion.target_norm='bogus'", "none, dataset, utterance"]),
    "a model too large": Case(_pretrain("model.encoder_embed_dim=4000000"),
                              ["encoder_embed_dim=4000000", "GiB"]),
    "a preset field of the wrong type": Case(
        ["pretrain", "--config-name", "bad", "--config-dir", "{tmp}/presets",
         "task.data={tmp}/data"], ["bad.yaml key 'optimization.max_update' expects an int"]),
    "downstream eval_step 0": Case(_downstream("-o", "config.runner.eval_step=0"),
                                   ["runner.eval_step=0", "at least 1"]),
    "downstream save_step 0": Case(_downstream("-o", "config.runner.save_step=0"),
                                   ["runner.save_step=0"]),
    "downstream log_step 0": Case(_downstream("-o", "config.runner.log_step=0"),
                                  ["runner.log_step=0"]),
    "downstream no accumulation": Case(
        _downstream("-o", "config.runner.gradient_accumulate_steps=0"),
        ["runner.gradient_accumulate_steps=0"]),
    "downstream lr -1": Case(_downstream("-o", "config.optimizer.lr=-1"),
                             ["optimizer.lr=-1.0", "at least 0"]),
    "downstream lr nan": Case(_downstream("-o", "config.optimizer.lr=nan"),
                              ["optimizer.lr=nan", "finite"]),
    "downstream batch_size text": Case(_downstream("-o", "config.runner.batch_size=abc"),
                                       ["'runner.batch_size' expects an int, got 'abc'"]),
    "downstream unknown key": Case(_downstream("-o", "config.runner.eval_stepp=3"),
                                   ["'runner.eval_stepp'", "runner.eval_step"]),
    "downstream recipe of the wrong type": Case(
        _downstream("-c", "{tmp}/recipes/wrong_type.yaml"),
        ["wrong_type.yaml: featurizer.layer_norm='yes'", "true or false"]),
    "downstream recipe without a section": Case(
        _downstream("-c", "{tmp}/recipes/no_runner.yaml"),
        ["no_runner.yaml: section 'runner' is missing"]),
    "downstream recipe with text for a number": Case(
        _downstream("-c", "{tmp}/recipes/abc.yaml"),
        ["abc.yaml: runner.total_steps='abc'", "an integer of at least 1"]),
    # devices and distributed variables
    "tpu": Case(_pretrain("common.device=tpu"), ["common.device='tpu'"]),
    "WORLD_SIZE without MASTER_ADDR": Case(
        _pretrain(), ["WORLD_SIZE=2", "MASTER_ADDR"], env={"WORLD_SIZE": "2", "RANK": "0"}),
    "WORLD_SIZE not an integer": Case(_pretrain(), ["WORLD_SIZE='two'"],
                                      env={"WORLD_SIZE": "two"}),
    "downstream on a tpu": Case(["downstream", "-d", "ks", "--device", "tpu"],
                                ["--device 'tpu' is not a device"]),
    "downstream seed beyond 64 bits": Case(
        ["downstream", "-d", "ks", "--seed", str(2**70)], [f"--seed {2**70}"]),
    # study files
    "study file malformed": Case(["study", "--config", "{tmp}/malformed.yaml"],
                                 ["malformed.yaml: not a valid YAML file"]),
    "study file without downstream": Case(["study", "--config", "{tmp}/partial.yaml"],
                                          ["partial.yaml: downstream.tasks is missing"]),
    "study file wrong type": Case(["study", "--config", "{tmp}/typo.yaml"],
                                  ["typo.yaml: pretrain.budget_updates='abc'"]),
    "study file bad pretrain override": Case(
        ["study", "--config", "{tmp}/negative_lr.yaml"],
        ["negative_lr.yaml: pretrain (size 30)", "optimization.lr=-0.5"]),
    # crafted or mismatched files
    "shared structure": Case(["info", "{tmp}/shared.pt"],
                             ["shared.pt: not a checkpoint tera-speech can read safely"]),
    "3 x 1 GiB buffers": Case(["info", "{tmp}/buffers.pt"],
                              ["buffers.pt: not a checkpoint tera-speech can read safely"]),
    "nested 100000 deep": Case(["convert", "{tmp}/deep.pt", "{tmp}/o.pt", "--to", "s3prl"],
                               ["deep.pt: not a checkpoint tera-speech can read safely"]),
    "allowed call, wrong arguments": Case(
        ["info", "{tmp}/wrong.pt"], ["wrong.pt: not a checkpoint tera-speech can read safely"]),
    "downstream -e shared structure": Case(
        ["downstream", "-m", "evaluate", "-e", "{tmp}/shared.pt"],
        ["shared.pt: not a checkpoint tera-speech can read safely"]),
    "downstream -e wrong arguments": Case(
        ["downstream", "-m", "evaluate", "-e", "{tmp}/wrong.pt"],
        ["wrong.pt: not a checkpoint tera-speech can read safely"]),
    "binary manifest": Case(_pretrain("dataset.num_workers=0", "model.encoder_layers=1"),
                            ["train.tsv: not a manifest"]),
}


@pytest.fixture
def inputs(tmp_path, monkeypatch) -> Path:
    """The files the cases name, in one folder."""
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "keep.txt").write_text("mine\n")
    shutil.copy(FLAC, tmp_path / "v.flac")
    shutil.copy(S3PRL, tmp_path / "ck.pt")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.tsv").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "bad.yaml").write_text("optimization:\n  max_update: abc\n")
    quick = (REPO / "src" / "tera" / "configs" / "study" / "quick.yaml").read_text()
    (tmp_path / "malformed.yaml").write_text("corpus: [1\n")
    (tmp_path / "partial.yaml").write_text(quick.split("downstream:")[0])
    (tmp_path / "typo.yaml").write_text(quick.replace("budget_updates: 40",
                                                      "budget_updates: abc"))
    (tmp_path / "negative_lr.yaml").write_text(quick.replace("optimization.lr=0.002",
                                                             "optimization.lr=-0.5"))
    recipe = (REPO / "src" / "tera" / "configs" / "downstream" / "ks.yaml").read_text()
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "wrong_type.yaml").write_text(
        recipe.replace("featurizer: {layer_norm: false", "featurizer: {layer_norm: 'yes'"))
    (tmp_path / "recipes" / "no_runner.yaml").write_text(recipe.split("runner:")[0])
    (tmp_path / "recipes" / "abc.yaml").write_text(
        recipe.replace("total_steps: 200000", "total_steps: abc"))
    crafted.shared_structure(tmp_path / "shared.pt")
    crafted.huge_buffers(tmp_path / "buffers.pt")
    crafted.deep_nesting(tmp_path / "deep.pt")
    crafted.wrong_arguments(tmp_path / "wrong.pt")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line(code: int, err: str, named: list[str], status: int = 2) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == status, err[-2000:]
    assert 1 <= len(lines) <= 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    for text in named:
        assert text in lines[-1], (text, lines[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_each_mistake_is_one_line(name, inputs, monkeypatch, capsys):
    case = CASES[name]
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(case.cwd.format(tmp=inputs))
    before = _digests(inputs)
    code = main([arg.format(tmp=inputs) for arg in case.argv])
    assert_one_line(code, capsys.readouterr().err, case.named)
    after = _digests(inputs)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing lost or changed
    assert not (inputs / "new").exists()


@pytest.mark.parametrize("craft", ["shared_structure", "huge_buffers", "deep_nesting"])
def test_crafted_downstream_checkpoints_are_refused_in_bounded_memory(craft, tmp_path, capsys):
    """`tera downstream -e` reads through the same bounded reader as `info` and resume: one
    line, the load never holding 100 MB (tracemalloc sees every Python allocation)."""
    import tracemalloc

    path = getattr(crafted, craft)(tmp_path / f"{craft}.pt")
    tracemalloc.start()
    try:
        code = main(["downstream", "-m", "evaluate", "-e", str(path)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_one_line(code, capsys.readouterr().err,
                    [f"{craft}.pt: not a checkpoint tera-speech can read safely"])
    assert peak < 100 * 2**20, f"{peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("argv, named", [
    (_pretrain("common.device=cuda"), ["common.device=cuda", "CUDA is not available",
                                       "common.device=cpu"]),
    (["extract", "-u", "fbank", "{tmp}/v.flac", "--device", "cuda", "-o", "{tmp}/o.npz"],
     ["--device cuda: CUDA is not available", "--device cpu"]),
    (["downstream", "-d", "ks", "--device", "cuda:1"], ["--device cuda:1: CUDA is not"]),
])
def test_cuda_asked_for_but_absent_is_one_line(argv, named, inputs, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main([arg.format(tmp=inputs) for arg in argv])
    assert_one_line(code, capsys.readouterr().err, named)


# --- a full disk (or quota, permissions, a read-only file system) -------------------------------


FORMATS = {  # what is written -> (the command that writes it, the first file it writes)
    "npz (tera extract)": (["extract", "-u", "fbank", "{tmp}/v.flac", "-o", "{tmp}/out.npz"],
                           "out.npz"),
    "s3prl (torch)": (["convert", "{tmp}/ck.pt", "{tmp}/out.pt", "--to", "s3prl"], "out.pt"),
    "fairseq (torch)": (["convert", "{tmp}/ck.pt", "{tmp}/out.pt", "--to", "fairseq"],
                        "out.pt"),
    "safetensors": (["convert", "{tmp}/ck.pt", "{tmp}/out", "--to", "safetensors"],
                    "out/model.safetensors"),
    "transformers": (["convert", "{tmp}/ck.pt", "{tmp}/out", "--to", "transformers"],
                     "out/model.safetensors"),
}


def _refuse_writes(monkeypatch, code: int, after_bytes: int = 100) -> None:
    """Files the writer opens accept `after_bytes` bytes, then raise OSError(`code`) as a
    full disk does: partway through a file."""
    import builtins

    from tera.runs import files

    class FillingUp:
        def __init__(self, file) -> None:
            self.file, self.left = file, after_bytes

        def write(self, data) -> int:
            if len(data) > self.left:
                self.file.write(data[: self.left])
                self.left = 0
                raise OSError(code, os.strerror(code))
            self.left -= len(data)
            return self.file.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.file.close()

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr(files, "open", lambda *a, **k: FillingUp(builtins.open(*a, **k)),
                        raising=False)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_full_disk_is_one_line_whatever_the_format(fmt, inputs, monkeypatch, capsys):
    from tera.runs.files import temporary_files

    argv, first = FORMATS[fmt]
    _refuse_writes(monkeypatch, errno.ENOSPC)
    code = main([arg.format(tmp=inputs) for arg in argv])
    assert_one_line(code, capsys.readouterr().err,
                    [f"{inputs / first}: cannot write: no space left on device"])
    leftovers = [p for p in inputs.rglob("*") if p.name.startswith(".") or "out" in p.name]
    assert [p for p in leftovers if p.is_file()] == [], leftovers  # nothing partial
    assert temporary_files(inputs) == []


@pytest.mark.parametrize("code, reason", [(errno.EDQUOT, "disk quota exceeded"),
                                          (errno.EACCES, "permission denied"),
                                          (errno.EROFS, "read-only file system")])
def test_other_refused_writes_are_named(code, reason, inputs, monkeypatch, capsys):
    _refuse_writes(monkeypatch, code, after_bytes=0)
    status = main([arg.format(tmp=inputs) for arg in FORMATS["s3prl (torch)"][0]])
    assert_one_line(status, capsys.readouterr().err, [f"out.pt: cannot write: {reason}"])
    assert not (inputs / "out.pt").exists()


# --- a run that cannot start: ends, within its timeout or on a signal ---------------------------


def _peerless(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    """Rank 0 of 2, the other never started."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "data").mkdir(exist_ok=True)
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "PYTHONPATH": str(REPO / "src")}
    argv = [arg.format(tmp=tmp_path) for arg in _pretrain(*overrides)]
    return subprocess.Popen([sys.executable, "-m", "tera.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_peerless_distributed_start_times_out_with_one_line(tmp_path):
    started = time.monotonic()
    process = _peerless(tmp_path, "distributed_training.init_timeout=2")
    _, err = process.communicate(timeout=120)
    assert time.monotonic() - started < 60
    assert_one_line(process.returncode, err, ["could not join the other processes at "
                                              "127.0.0.1", "within 2 s",
                                              "distributed_training.init_timeout"])


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_peerless_distributed_start_obeys_signals(tmp_path, signum, status):
    process = _peerless(tmp_path)  # the default timeout: 300 s
    waiting = process.stderr.readline()
    assert "waiting up to 300 s for 2 processes" in waiting
    time.sleep(0.5)
    sent = time.monotonic()
    process.send_signal(signum)
    rest = process.communicate(timeout=60)[1]
    assert time.monotonic() - sent < 10
    assert_one_line(process.returncode, waiting + rest, ["tera pretrain"], status=status)


# --- a study's run files, cut or edited -----------------------------------------------------


def test_corrupt_run_files_of_a_study_name_the_file(tmp_path):
    """What the study's report reads back: `results.json` and `<split>_items.tsv`."""
    import json

    from tera.downstream.bootstrap import read_items
    from tera.errors import UserError
    from tera.runs.records import read_result

    result = {"task": "ks", "metric": "accuracy", "value": "abc", "split": "test",
              "checkpoint": "x", "upstream": "fbank", "upstream_ckpt": None,
              "layer_weights": [1.0], "step": 1, "wall_time_s": 1.0}
    (tmp_path / "results.json").write_text(json.dumps(result))
    with pytest.raises(UserError, match=r"results\.json: value should be a number, got 'abc'"):
        read_result(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({**result, "value": 0.5,
                                                       "layer_weights": ["a"]}))
    with pytest.raises(UserError, match=r"layer_weights should be a list of numbers"):
        read_result(tmp_path)
    items = tmp_path / "test_items.tsv"
    items.write_text("id\tcorrect\nu1\tyes\n")
    with pytest.raises(UserError, match=r"test_items\.tsv: column correct: .*'yes'"):
        read_items(items)
    items.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(UserError, match=r"test_items\.tsv: not an items file"):
        read_items(items)
