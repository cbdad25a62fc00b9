"""Pre-training presets: YAML data under `tera/configs/pretrain/`, plus their size and cost.

A preset file states only what differs from `_common.yaml`; `load_preset` merges the two.
The fairseq fork's file names (`tera_slim_200per_50flops_librispeech` -> `slim_200per_50flops`)
and `slim_100per` (= `slim`) are accepted; so are the fork's files themselves, from a
`config_dir` (`tera.presets.fork_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from tera.errors import UserError
from tera.model.config import TARGET_DIM, TeraConfig
from tera.model.conv_geometry import ConvGeometry
from tera.model.tera import TeraModel
from tera.presets.fork_layout import from_fork_layout
from tera.yaml_files import read_yaml_mapping

ALIASES = {"slim_100per": "slim"}
COMMON = "_common"


def preset_dir() -> Path:
    """The folder of the shipped preset YAML files (inside the installed package)."""
    return Path(str(resources.files("tera") / "configs" / "pretrain"))


def preset_names(config_dir: Path | None = None) -> list[str]:
    """The preset names in `config_dir` (default: the shipped presets and their fork aliases),
    sorted."""
    folder = Path(config_dir) if config_dir else preset_dir()
    names = sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))
    return sorted(set(names) | (set(ALIASES) if config_dir is None else set()))


def canonical_name(name: str) -> str:
    """`tera_slim_200per_50flops_librispeech.yaml` -> `slim_200per_50flops`; aliases resolved."""
    name = Path(name).name.removesuffix(".yaml")
    name = name.removeprefix("tera_").removesuffix("_librispeech")
    return ALIASES.get(name, name)


def load_preset(name: str, config_dir: str | Path | None = None) -> DictConfig:
    """The merged training config of a preset (`_common.yaml` + the preset's file)."""
    return read_preset(name, config_dir)[0]


def read_preset(name: str, config_dir: str | Path | None = None
                ) -> tuple[DictConfig, list[str]]:
    """The merged training config of a preset and the keys of its file that tera-speech does
    not use (the fairseq fork's files have some: see `tera.presets.fork_layout`).

    With `config_dir`, the preset is looked up there first (`NAME.yaml`, or a path below it
    such as `exp/NAME` as Hydra allows; its own `_common.yaml` if it has one, else the
    packaged one), then among the packaged presets.
    """

    path = preset_file(name, config_dir)
    common = path.parent / f"{COMMON}.yaml"
    if not common.is_file():
        common = preset_dir() / f"{COMMON}.yaml"
    return from_fork_layout(read_yaml_mapping(path, "preset"),
                            read_yaml_mapping(common, "preset"), path)


def preset_file(name: str, config_dir: str | Path | None = None) -> Path:
    """The YAML file of a preset (see `read_preset` for where it is looked up)."""
    canonical = canonical_name(name)
    folders = ([Path(config_dir)] if config_dir else []) + [preset_dir()]
    for folder in folders:
        for stem in (name.removesuffix(".yaml"), Path(name).name.removesuffix(".yaml"),
                     canonical):
            path = folder / f"{stem}.yaml"
            if path.is_file():
                return path
    raise UserError(
        f"unknown preset {name!r}; known presets: {', '.join(preset_names())}"
        + (f" (also looked in {config_dir})" if config_dir else "")
    )


def model_config(cfg: DictConfig) -> TeraConfig:
    """The `TeraConfig` of a merged training config (its `model` section)."""
    return TeraConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True))


@dataclass
class ModelCost:
    """Size and forward cost of a model. FLOPs count a multiply-add as 2."""

    parameters: int
    flops_per_second: float  # forward FLOPs per second of 16 kHz audio
    conv_flops_per_second: float
    transformer_flops_per_second: float

    def as_dict(self) -> dict[str, float]:
        """The fields as a plain dict, for JSON."""
        return dict(self.__dict__)


def count_parameters(cfg: TeraConfig) -> int:
    """Trainable parameters of the model built from `cfg` (label_embs_concat excluded)."""
    with torch.device("meta"):  # shapes only, no memory
        model = TeraModel(cfg)
    return sum(p.numel() for p in model.parameters())


def training_flops(cfg: TeraConfig, num_samples: int, utterances: float = 1.0) -> float:
    """Training FLOPs of `utterances` utterances of `num_samples` samples: the forward pass
    and a backward pass of about twice its cost (the usual 3 x forward)."""
    return 3.0 * utterances * forward_flops(cfg, num_samples)["total"]


def forward_flops(cfg: TeraConfig, num_samples: int, sample_rate: int = 16000) -> dict[str, float]:
    """Forward FLOPs of one utterance of `num_samples` samples, by part.

    conv: the feature extractor; transformer: projection, positional conv, attention
    (including the T² score and mixing products) and feed-forward layers, and final_proj.
    """
    del sample_rate
    conv = 0.0
    in_channels = 1
    layer_frames = ConvGeometry.of(cfg.conv_layers).layer_frames(num_samples)
    for (channels, kernel, _), frames in zip(cfg.conv_layers, layer_frames):
        conv += 2.0 * frames * in_channels * kernel * channels
        in_channels = channels
    t, d, f = float(layer_frames[-1]), cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim
    projection = 2.0 * t * in_channels * d if in_channels != d else 0.0
    pos_conv = 2.0 * t * d * (d // cfg.conv_pos_groups) * cfg.conv_pos
    per_layer = 2.0 * t * (4 * d * d + 2 * d * f) + 2.0 * 2 * t * t * d
    head = 2.0 * t * d * TARGET_DIM
    transformer = projection + pos_conv + cfg.encoder_layers * per_layer + head
    return {"conv": conv, "transformer": transformer, "total": conv + transformer, "frames": t}


def model_cost(cfg: TeraConfig, utterance_seconds: float = 15.625) -> ModelCost:
    """Parameters and forward FLOPs per second of audio, for utterances of the given length
    (attention grows with length; the default is the 250000-sample training crop)."""
    samples = int(round(utterance_seconds * 16000))
    flops = forward_flops(cfg, samples)
    seconds = samples / 16000
    return ModelCost(
        parameters=count_parameters(cfg),
        flops_per_second=flops["total"] / seconds,
        conv_flops_per_second=flops["conv"] / seconds,
        transformer_flops_per_second=flops["transformer"] / seconds,
    )
