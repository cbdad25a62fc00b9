"""Reading the YAML files a person writes (study files, presets, downstream recipes): one
reader, so that every such file fails the same way, in one line naming the file.

    cfg = read_yaml_mapping(path, "study file", "corpus, pretrain, downstream, ...")

It imports nothing of tera-speech but its errors, so the lowest layers (presets, which the
model and checkpoint code read) can use it.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tera.errors import UserError


def read_yaml_mapping(path: str | Path, what: str, sections: str | None = None) -> DictConfig:
    """The mapping at the top of the YAML file `path`, or a one-line `UserError` naming the
    file when it is missing, is not YAML or holds something else than a mapping.

    `what` names the kind of file ("study file", "preset", "recipe"); `sections` lists the
    sections expected at its top level, for the message.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such {what}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml and omegaconf raise many types; all mean "bad file"
        reason = " ".join(str(err).split())  # YAML's message, on one line
        raise UserError(f"{path}: not a valid YAML file: {reason}") from err
    if not isinstance(cfg, DictConfig):  # OmegaConf reads YAML as a mapping or a list
        listed = f" ({sections})" if sections else ""
        raise UserError(f"{path}: a {what} is a mapping of sections{listed} at its top level, "
                        "not a list")
    return cfg
