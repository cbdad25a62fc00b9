"""The one YAML reader of study files, presets and recipes: a file that is missing, is not
YAML or is not a mapping is one line naming the file, the same way for all three."""

from __future__ import annotations

import pytest
from omegaconf import DictConfig

from tera.cli import main
from tera.errors import UserError
from tera.yaml_files import read_yaml_mapping

BROKEN = {  # the file's text -> what the one line says
    "malformed": ("corpus: [1\n", "not a valid YAML file"),
    "a list": ("- corpus\n- pretrain\n", "is a mapping of sections"),
}


def test_reader_returns_the_mapping_or_one_line_naming_the_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("runner: {total_steps: 3}\n")
    cfg = read_yaml_mapping(good, "recipe")
    assert isinstance(cfg, DictConfig) and cfg.runner.total_steps == 3
    with pytest.raises(UserError, match=r"absent\.yaml: no such study file$"):
        read_yaml_mapping(tmp_path / "absent.yaml", "study file")
    for name, (text, says) in BROKEN.items():
        path = tmp_path / f"{name.replace(' ', '_')}.yaml"
        path.write_text(text)
        with pytest.raises(UserError) as error:
            read_yaml_mapping(path, "preset", "model, task")
        message = str(error.value)
        assert message.startswith(f"{path}: ") and says in message, message
        assert "\n" not in message
    with pytest.raises(UserError, match=r"\(model, task\) at its top level, not a list"):
        read_yaml_mapping(tmp_path / "a_list.yaml", "preset", "model, task")


def _commands(tmp) -> dict[str, list[str]]:
    """The command reading each kind of file, `{file}` standing for it."""
    return {
        "study file": ["study", "--config", "{file}"],
        "preset": ["pretrain", "--config-name", "bad", "--config-dir", str(tmp),
                   f"task.data={tmp}/data"],
        "recipe": ["downstream", "-d", "ks", "-u", "fbank", "-p", f"{tmp}/ds", "--data-root",
                   f"{tmp}/data", "-c", "{file}"],
    }


@pytest.mark.parametrize("kind", ["study file", "preset", "recipe"])
@pytest.mark.parametrize("broken", list(BROKEN))
def test_each_kind_of_file_fails_the_same_way(kind, broken, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    text, says = BROKEN[broken]
    path = tmp_path / "bad.yaml"  # the preset's name is `bad`
    path.write_text(text)
    argv = [arg.replace("{file}", str(path)) for arg in _commands(tmp_path)[kind]]
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert f"{path}: " in lines[0] and says in lines[0], lines
    assert not (tmp_path / "ds").exists() and not (tmp_path / "study").exists()
