"""The process settings the compute commands make (`tera.runtime`), and library errors as
`ValueError`s that the command line still answers in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import tera.runtime
from tera.cli import main
from tera.errors import UserError
from tera.model.config import TeraConfig
from tera.model.feature_extractor import ConvFeatureExtractor

from .paths import REPO


@pytest.mark.parametrize("argv", [
    ["pretrain", "--config-name", "no_such_preset"],
    ["downstream"],  # no -d: refused after the settings are made
])
def test_the_compute_commands_make_the_process_settings(monkeypatch, capsys, argv):
    calls = []
    monkeypatch.setattr(tera.runtime, "prepare_process", lambda: calls.append(argv[0]))
    assert main(argv) == 2
    assert calls == [argv[0]]
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_prepare_process_flushes_denormals():
    """In a process of its own: the setting is process-wide."""
    script = ("import torch; from tera.runtime import prepare_process; "
              "tiny = torch.tensor([1e-40]); assert (tiny * 1.0).item() != 0.0; "
              "prepare_process(); print((tiny * 1.0).item())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(REPO / "src")})
    assert float(out.stdout) == 0.0


def test_library_errors_are_value_errors():
    assert issubclass(UserError, ValueError)
    with pytest.raises(ValueError, match="expected waveforms of shape \\[batch, sample\\]"):
        ConvFeatureExtractor([(8, 10, 5)])(torch.zeros(1, 1, 100))  # from inside an nn.Module
    with pytest.raises(ValueError, match="encoder_layers must be an integer of at least 1"):
        TeraConfig(encoder_layers=0)


def test_the_command_line_answers_them_in_one_line(capsys):
    assert main(["info", "no_such_preset"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tera info: error: no_such_preset: neither a checkpoint nor")
    assert len(err.strip().splitlines()) == 1
