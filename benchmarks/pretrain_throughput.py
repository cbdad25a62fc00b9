"""Pre-training throughput with the real data pipeline: is the model ever waiting for data?

    python benchmarks/pretrain_throughput.py [--corpus DIR] [--updates 20]

For tiny and slim, and DataLoader workers 0 and 2, it trains a few updates on a manifest of
the corpus and prints updates/s and audio seconds/s measured two ways: end to end (data
loader on: reading, resampling, cropping and collating included) and over the update alone
(data loader off: forward, backward and optimiser step only). The ratio is the share of time
spent waiting for data.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from tera.corpora import default_corpus_dir
from tera.pretrain.config import load_config
from tera.pretrain.manifest import write_manifest
from tera.pretrain.trainer import Trainer
from tera.runtime import prepare_process


def measure(preset: str, manifest: Path, workers: int, updates: int, save_dir: Path) -> dict:
    cfg = load_config(preset, overrides=[
        f"task.data={manifest}", f"checkpoint.save_dir={save_dir}",
        f"optimization.max_update={updates}", f"dataset.num_workers={workers}",
        "dataset.validate_interval_updates=0", "checkpoint.save_interval_updates=0",
        "task.max_sample_size=64000", "dataset.max_tokens=256000", "common.log_interval=1000",
        "task.min_sample_size=16000"])
    prepare_process()  # as `tera pretrain` does
    trainer = Trainer(cfg)
    trainer.valid_set = None
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    audio = trainer.audio_seconds
    return {
        "preset": preset, "workers": workers, "updates": updates,
        "updates_per_s_loader_on": updates / total,
        "audio_seconds_per_s_loader_on": audio / total,
        "updates_per_s_loader_off": updates / trainer.wall_time,
        "audio_seconds_per_s_loader_off": audio / trainer.wall_time,
        "waiting_for_data_share": max(0.0, 1 - trainer.wall_time / total),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(default_corpus_dir("default") / "librispeech"))
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--preset", action="append", help="default: tiny and slim")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest"
        write_manifest(args.corpus, manifest, valid_percent=0.0)
        for preset in args.preset or ["tiny", "slim"]:
            for workers in (0, 2):
                row = measure(preset, manifest, workers, args.updates,
                              Path(tmp) / f"{preset}_{workers}")
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                  for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
