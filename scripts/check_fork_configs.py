"""Check that every YAML file of the fairseq fork's pre-training config folder loads with
`tera pretrain --config-dir` and resolves to the settings of tera-speech's preset of the same
name.

    python scripts/check_fork_configs.py <fairseq>/examples/tera/config/pretrain

For each file it runs what `tera pretrain --config-dir DIR --config-name NAME task.data=...
task.label_dir=...` resolves, compares the model, task, dataset, criterion and optimisation
sections with the packaged preset of the same name (`tera_slim_200per_librispeech` ->
`slim_200per`), and prints the differences; other sections (checkpoint intervals, logging,
the distributed backend) are listed as notes. Hydra overlay files (`# @package _global_`,
such as `data/iter1.yaml`) are only loaded: they have no preset of their own. Exit status 1
when a preset file differs. The fork's files are not part of tera-speech: this script reads
the folder it is given and is not needed by the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tera.errors import UserError
from tera.model.config import TeraConfig
from tera.presets import canonical_name, model_config, preset_names
from tera.pretrain.config import load_config

COMPARED = ("model", "task", "dataset", "criterion", "optimization", "optimizer",
            "lr_scheduler")
MODEL_FIELDS = {f.name for f in dataclasses.fields(TeraConfig)} - {"extra"}
COMMAND_LINE = ["task.data=/data/960", "task.label_dir=/labels/960"]


def flat(cfg) -> dict:
    """`section.key` -> value; the model section as the model it builds (defaults filled in)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    model = model_config(cfg).to_dict()
    plain["model"] = {k: v for k, v in model.items() if k in MODEL_FIELDS}
    return {f"{s}.{k}": v for s, values in plain.items() for k, v in values.items()}


def differences(ours: dict, theirs: dict, compared: bool) -> list[str]:
    """The keys that differ, in the compared sections or (compared=False) the others."""
    keys = sorted(set(ours) | set(theirs))
    keys = [k for k in keys if (k.split(".")[0] in COMPARED) == compared]
    return [f"{k}: fork {theirs.get(k, '-')!r}, preset {ours.get(k, '-')!r}"
            for k in keys if ours.get(k, "-") != theirs.get(k, "-") and k != "common.preset"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the fork's examples/tera/config/pretrain")
    args = parser.parse_args()
    files = sorted(Path(args.folder).rglob("*.yaml"))
    if not files:
        print(f"{args.folder}: no YAML files", file=sys.stderr)
        return 2
    failed = 0
    for path in files:
        name = str(path.relative_to(args.folder).with_suffix(""))
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                theirs = flat(load_config(path.stem, path.parent, COMMAND_LINE))
        except UserError as err:
            print(f"FAIL  {name}: does not load: {err}")
            failed += 1
            continue
        if "@package _global_" in path.read_text():
            print(f"ok    {name}: a Hydra overlay, loads (no preset of its own)")
            continue
        preset = canonical_name(path.stem)
        if preset not in preset_names():
            print(f"FAIL  {name}: no packaged preset {preset!r}")
            failed += 1
            continue
        ours = flat(load_config(preset, None, COMMAND_LINE[:1]))
        diff = differences(ours, theirs, compared=True)
        notes = differences(ours, theirs, compared=False)
        print(f"{'FAIL' if diff else 'ok  '}  {name} == {preset}"
              + (f" (notes: {'; '.join(notes)})" if notes else ""))
        for line in diff:
            print(f"        {line}")
        failed += bool(diff)
    print(f"{len(files)} files, {failed} differ or fail to load")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
