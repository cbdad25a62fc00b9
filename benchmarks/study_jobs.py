"""How many jobs should `tera study` run at once? Pre-training throughput of the default
study's 100 % model, run the way the study runs it (`tera pretrain` processes), as one job
using every core and as one job per core side by side.

    python benchmarks/study_jobs.py [--updates 150] [--manifest DIR]

Prints each layout's updates/s (end to end, process start, target statistics and the final
validation included) and the ratio of the side-by-side layout to the single job.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tera.study import pretrain_runs, study_config, write_training_manifest


def pretrain_command(manifest: Path, save_dir: Path, updates: int) -> list[str]:
    spec = study_config(None, quick=False)
    run = next(r for r in pretrain_runs(spec, save_dir) if r.size == 100.0)
    return [sys.executable, "-m", "tera.cli", "pretrain", "--config-name",
            str(spec.pretrain.preset), *run.overrides, f"task.data={manifest}",
            f"checkpoint.save_dir={save_dir}", f"optimization.max_update={updates}",
            "checkpoint.save_interval_updates=0", f"dataset.validate_interval_updates={updates}",
            "dataset.num_workers=0"]


def side_by_side(jobs: int, threads: int, manifest: Path, folder: Path, updates: int) -> float:
    """Updates per second of `jobs` concurrent pre-trainings with `threads` threads each."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    processes = [subprocess.Popen(pretrain_command(manifest, folder / f"{jobs}x{threads}_{i}",
                                                   updates),
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i in range(jobs)]
    if any(p.wait() for p in processes):
        raise SystemExit("a pre-training failed")
    return jobs * updates / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=150)
    parser.add_argument("--manifest", help="pre-training manifest folder (default: one for the "
                        "embedded default corpus, which must exist)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = Path(args.manifest) if args.manifest else folder / "manifest"
        if not args.manifest:
            from tera.corpora import default_corpus_dir

            write_training_manifest(default_corpus_dir("default"), manifest)
        single = side_by_side(1, cores, manifest, folder, args.updates)
        print(f"1 job x {cores} threads: {single:.2f} updates/s", flush=True)
        if cores < 2:
            return
        parallel = side_by_side(cores, 1, manifest, folder, args.updates)
        print(f"{cores} jobs x 1 thread: {parallel:.2f} updates/s")
        print(f"side by side / single = {parallel / single:.2f}x")


if __name__ == "__main__":
    main()
