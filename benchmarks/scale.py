"""How the work grows with the data: trees of growing size made of hard links to one real
file, the cost of each stage at each size, the fitted exponent (cost ~ n^k) and the cost
extrapolated to LibriSpeech 960 (281,241 files), VoxCeleb1 (153,516 files) and a
Libri-Light-sized manifest (60k h cut into 12 s pieces: ~17.6 M files).

Stages, each measured in a fresh process (so that its peak memory is its own):
- manifest: `tera manifest` over the tree (reads every header);
- check, start / resume: the pre-training check of every listed file, with no record of an
  earlier check, then again with it (a resume, another run on the same manifest); the
  dataset is made before the measure;
- train, start / resume: `tera pretrain` to its first update, from the command's launch;
- loader: the presets' DataLoader, audio seconds per second;
- workers: DataLoader workers' USS over three epochs, paths as arrays and as a list;
- lengths, first / later: the downstream utterance lengths, in a first process, then in a
  later one (a resume, an evaluation, the next seed; the utterances are listed first);
- features: FBANK features of one in `--cache-share` (50) of the tree's files (the
  cache's cost per entry does not depend on the upstream) computed without the cache, then
  filling a fresh shared cache (`tera.downstream.features`: every entry written through,
  atomically), then read back by a later process (a resume, the next seed, another task
  on the split);
- bootstrap: `interval` on VoxCeleb1-like trial lists of 5,000, 37,720 (VoxCeleb1-O) and
  579,818 trials (VoxCeleb1-E, 1,251 speakers); the trial list is made first.
And, in this process: the cost of a 15.6 s crop from files of 10 s to 20 minutes, read
by seeking (`tera.audio.load_crop`) and, for contrast, by decoding the whole file.

    python -m benchmarks.scale [--sizes 1000,5000,20000,50000] [--crop-repeats 10]
        [--parts pretrain,lengths,features,crop,bootstrap]

Costs are extrapolated from the largest tree, by n^k but never less than in proportion to
n. The default run took 29 minutes on 2 cores shared with other work (load average 11-14);
`--sizes 1000,5000,20000` or fewer `--parts` make it shorter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tests.trials import trial_list

REPO = Path(__file__).resolve().parents[1]
FLAC = REPO / "tests" / "data" / "librispeech-6313-76958-0021.flac"
TARGETS = {"LibriSpeech 960": 281_241, "VoxCeleb1": 153_516, "17.6 M files": 17_600_000}
TRIALS = ((5_000, 40), (37_720, 40), (579_818, 1_251))  # (trials, speakers)
CROP = 250_000  # samples: the 15.6 s crop of the presets
FILE_SECONDS = (10, 60, 300, 1200)


# --- one stage in a fresh process -------------------------------------------------------------


def peak_bytes() -> int:
    """This process's peak resident memory (VmHWM: unlike getrusage's maxrss, not inherited
    from the parent that started it)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


def run_stage(stage: str, tree: Path, size: int) -> dict:
    """Run in the child: the stage's seconds and its peak memory above what the process
    held before it (the interpreter, the stage's modules and its inputs)."""
    work = stage_work(stage, tree, size)
    before = peak_bytes()
    start = time.perf_counter()
    extra = work()
    extra = extra if isinstance(extra, dict) else {}
    return {"seconds": time.perf_counter() - start, "peak_mb": (peak_bytes() - before) / 2**20,
            "process_peak_mb": peak_bytes() / 2**20, **extra}


def stage_work(stage: str, tree: Path, size: int):
    """The stage's work, ready to run: its inputs are made first, outside the measure.
    Only the stage's own modules are imported (the bootstrap's baseline holds no torch)."""
    manifest = tree.parent / f"manifest-{tree.name}"
    if stage == "manifest":
        from tera.pretrain.manifest import write_manifest

        return lambda: write_manifest(tree, manifest, valid_percent=0.01)
    if stage.startswith("check"):
        from tera.pretrain.data import CroppedAudio
        from tera.pretrain.file_check import record_path

        if stage == "check-start":
            record_path(manifest / "train.tsv").unlink(missing_ok=True)
        return CroppedAudio(manifest / "train.tsv", CROP, 32_000).check_files
    if stage.startswith("train"):
        return training_work(stage, tree, manifest)
    if stage == "loader":
        return loader_work(manifest)
    if stage.startswith("workers"):
        return worker_work(stage, manifest)
    if stage.startswith("lengths"):
        from tera.corpora import Utterance, lengths

        os.environ["TERA_SPEECH_HOME"] = str(tree.parent / f"home-{tree.name}")
        utterances = [Utterance(p.stem, p) for p in sorted(tree.rglob("*.flac"))]
        return lambda: lengths.utterance_samples(utterances)
    if stage.startswith("features") or stage.startswith("cache"):
        return feature_work(stage, tree, size)
    from tera.downstream.bootstrap import interval

    items = trial_list(size, dict(TRIALS).get(size, 1_251))
    return lambda: interval([items])


def training_work(stage: str, tree: Path, manifest: Path):
    """`tera pretrain` (the tiny preset on 1 s crops, one DataLoader worker) to its first
    update: from scratch with no check record (`train-start`: every header read, the target
    statistics computed), or resuming the run that left (`train-resume`). The time is taken
    from the command's launch (the parent's clock) to the end of the first update."""
    import shutil

    from tera.pretrain.config import load_config
    from tera.pretrain.file_check import record_path
    from tera.pretrain.trainer import Trainer, pretrain
    from tera.runtime import prepare_process

    prepare_process()  # as `tera pretrain` does
    save_dir = tree.parent / f"run-{tree.name}"
    if stage == "train-start":
        shutil.rmtree(save_dir, ignore_errors=True)
        for split in ("train", "valid"):
            record_path(manifest / f"{split}.tsv").unlink(missing_ok=True)
    cfg = load_config("tiny", overrides=[
        f"task.data={manifest}", f"checkpoint.save_dir={save_dir}",
        f"optimization.max_update={1 if stage == 'train-start' else 2}",
        "task.max_sample_size=16000", "task.min_sample_size=4000", "dataset.max_tokens=64000",
        "dataset.num_workers=1", "common.log_interval=1"])
    first = []
    update = Trainer._update

    def timed_update(self, micro):
        result = update(self, micro)
        first.append(time.time())
        return result

    Trainer._update = timed_update

    def work() -> dict:
        pretrain(cfg)
        return {"first_update_at": first[0]}

    return work


def loader_work(manifest: Path):
    """The DataLoader of a pre-training run (the presets' 15.6 s crops and 1.4 M-sample
    batches, two workers) over the first 40 batches of an epoch: audio seconds per second."""
    from torch.utils.data import DataLoader

    from tera.pretrain.data import CroppedAudio, LengthBatchSampler

    dataset = CroppedAudio(manifest / "train.tsv", CROP, 32_000)
    sampler = LengthBatchSampler(dataset.sizes, dataset.num_tokens(), 1_400_000, 0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate,
                        num_workers=2)

    def work() -> dict:
        start, audio = time.perf_counter(), 0
        for number, (_, lengths) in enumerate(loader):
            audio += int(lengths.sum())
            if number == 39:
                break
        return {"audio_per_s": audio / 16000 / (time.perf_counter() - start)}

    return work


def unique_bytes(pid: int) -> int:
    """A process's USS: the memory only it holds (its private pages)."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().split()
    return sum(int(rollup[i + 1]) * 1024 for i, key in enumerate(rollup)
               if key in ("Private_Clean:", "Private_Dirty:"))


def worker_work(stage: str, manifest: Path):
    """Three epochs of two persistent DataLoader workers over the whole manifest, each
    worker's USS after its first batch and after every epoch. The workers look up every
    file's path, as a real epoch does, but hand back silence instead of decoding (an epoch
    of 50k files then takes seconds). `workers-list`: the same with the paths held as a
    Python list of strings, for contrast."""
    import torch
    from torch.utils.data import DataLoader

    from tera.pretrain.data import CroppedAudio, LengthBatchSampler

    class PathsOnly(CroppedAudio):
        def _load_crop(self, index: int, size: int) -> torch.Tensor:
            self.looked_up = self.root / self.files[index]
            return torch.zeros(size)

    dataset = PathsOnly(manifest / "train.tsv", 16_000, 4_000)
    if stage == "workers-list":
        dataset.files = list(dataset.files)
    sampler = LengthBatchSampler(dataset.sizes, dataset.num_tokens(), 1_024_000, 0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate,
                        num_workers=2, persistent_workers=True)

    def uss() -> float:
        pids = [worker.pid for worker in loader._iterator._workers]
        return sum(unique_bytes(pid) for pid in pids) / len(pids) / 2**20

    def work() -> dict:
        batches = iter(loader)
        next(batches)
        sizes = [uss()]
        for epoch in range(3):
            if epoch:
                sampler.state.epoch = epoch
                batches = iter(loader)
            for _ in batches:
                pass
            sizes.append(uss())
        return {"worker_uss_mb": sizes}

    return work


PARTS = ("pretrain", "lengths", "features", "crop", "bootstrap")
STAGES = ("manifest", "check-start", "check-resume", "train-start", "train-resume", "loader",
          "workers-arrays", "workers-list", "lengths-first", "lengths-later")
FEATURE_STAGES = ("features-nocache", "cache-fill", "cache-read")


def feature_work(stage: str, tree: Path, count: int):
    """FBANK states of `count` of the tree's files in batches of 16: without the cache, into
    a fresh cache folder, or from the folder the fill left."""
    import shutil

    import torch

    from tera.corpora import Utterance
    from tera.downstream.features import FeatureCache
    from tera.upstream import load_upstream

    folder = tree.parent / f"features-{tree.name}"
    if stage == "cache-fill":
        shutil.rmtree(folder, ignore_errors=True)
    files = sorted(tree.rglob("*.flac"))[:count]
    utterances = [Utterance(p.stem, p) for p in files]
    cache = FeatureCache(load_upstream("fbank"), folder, enabled=stage != "features-nocache")

    def work() -> None:
        for start in range(0, len(utterances), 16):
            cache.states(utterances[start : start + 16], torch.device("cpu"))
        if stage == "cache-read" and cache.misses:
            raise SystemExit(f"{cache.misses} features computed again at read-back")

    return work


def measure(stage: str, tree: Path, size: int) -> dict:
    # The workers' USS is to show what the dataset costs them, not glibc's heap, whose
    # sliding mmap threshold can keep a few hundred MB of freed batches in a worker.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)} \
        if stage.startswith("workers") else None
    launched = time.time()
    child = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--stage", stage, "--tree",
                            str(tree), "--size", str(size)], cwd=REPO, capture_output=True,
                           text=True, check=False, env=env)
    if child.returncode:
        raise SystemExit(f"{stage} at {size}: {child.stderr.strip().splitlines()[-1]}")
    result = json.loads(child.stdout.splitlines()[-1])
    if "first_update_at" in result:  # the time to the first update, from the launch
        result["seconds"] = result["first_update_at"] - launched
    return result


# --- trees and fits ---------------------------------------------------------------------------


def build_tree(folder: Path, size: int) -> Path:
    """`size` hard links to a copy of the test file (a file takes at most 65,000 links),
    100 to a speaker folder."""
    import shutil

    tree = folder / f"tree-{size}"
    source = shutil.copy(FLAC, folder / f"source-{size}.flac")
    for index in range(size):
        speaker = tree / f"{index // 100:05d}"
        speaker.mkdir(parents=True, exist_ok=True)
        os.link(source, speaker / f"{index:08d}.flac")
    return tree


def fit(sizes: list[int], costs: list[float]) -> tuple[float, float]:
    """(k, c) of cost = c * n^k, least squares in log-log."""
    k, log_c = np.polyfit(np.log(sizes), np.log(np.maximum(costs, 1e-9)), 1)
    return float(k), float(np.exp(log_c))


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def extrapolate(sizes: list[int], seconds: list[float], k: float, n: int) -> float:
    """From the largest size measured: by n^k, but never less than in proportion to n (a
    fixed start-up cost makes k < 1 at small sizes; a cost per file stays)."""
    return seconds[-1] * (n / sizes[-1]) ** max(k, 1.0)


def print_stage(name: str, sizes: list[int], results: list[dict]) -> None:
    seconds = [r["seconds"] for r in results]
    peaks = [r["peak_mb"] for r in results]
    k, _ = fit(sizes, seconds)
    per_file = per_file_bytes(sizes, peaks)
    cells = "  ".join(f"{n:>7,}: {duration(s):>7} {p:6.1f} MB" for n, s, p in
                      zip(sizes, seconds, peaks))
    targets = "  ".join(f"{label} {duration(extrapolate(sizes, seconds, k, n))}"
                        for label, n in TARGETS.items())
    print(f"{name:<16} {cells}\n{'':<16} k = {k:.2f}, memory {per_file:+.0f} B per file "
          f"({sizes[0]:,} -> {sizes[-1]:,}); extrapolated: {targets}", flush=True)


def per_file_bytes(sizes: list[int], megabytes: list[float]) -> float:
    """How much the memory grew per file from the smallest tree to the largest."""
    if len(sizes) < 2:
        return 0.0
    return (megabytes[-1] - megabytes[0]) * 2**20 / (sizes[-1] - sizes[0])


def print_workers(sizes: list[int], results: dict[str, list[dict]]) -> None:
    for stage, label in (("workers-arrays", "arrays"), ("workers-list", "a list of str")):
        uss = [r["worker_uss_mb"] for r in results[stage]]
        cells = "  ".join(f"{n:>7,}: " + " -> ".join(f"{u:.1f}" for u in row)
                          for n, row in zip(sizes, uss))
        print(f"{'workers':<16} paths as {label}: USS per worker, MB, after the first batch "
              f"and after epochs 1, 2, 3:\n{'':<16} {cells}")
        first_epoch = [row[1] - row[0] for row in uss]
        later = [(row[-1] - row[1]) / (len(row) - 2) for row in uss]
        print(f"{'':<16} growth in the first epoch {per_file_bytes(sizes, first_epoch):+.0f} B "
              f"per file ({sizes[0]:,} -> {sizes[-1]:,}); per later epoch "
              + ", ".join(f"{g:+.2f} MB" for g in later), flush=True)


def crop_by_seeking(path: Path, rng: np.random.Generator) -> None:
    from tera.audio import load_crop

    load_crop(path, CROP, lambda excess: int(rng.integers(excess + 1)))


def crop_after_decoding(path: Path, rng: np.random.Generator) -> None:
    """The crop as it was made before seeking: the whole file decoded, then cut."""
    from tera.audio import load_audio

    audio = load_audio(path)
    start = int(rng.integers(max(1, len(audio) - CROP + 1)))
    audio[start : start + CROP].clone()


def crop_costs(folder: Path, repeats: int) -> None:
    import soundfile as sf

    wave, rate = sf.read(FLAC, dtype="int16")
    rows = []
    for seconds in FILE_SECONDS:
        path = folder / f"long-{seconds}.flac"
        sf.write(path, np.resize(wave, seconds * rate), rate)
        rng = np.random.default_rng(0)
        crop_by_seeking(path, rng)  # warm: the first read also loads libraries
        rows.append((seconds, median_time(crop_by_seeking, (path, rng), repeats),
                     median_time(crop_after_decoding, (path, rng), max(2, repeats // 4))))
    print(f"{'crop 15.6 s':<16} " + "  ".join(
        f"{s:>4} s file: {duration(a):>6} (whole file {duration(b)})" for s, a, b in rows))
    k, _ = fit([r[0] for r in rows], [r[1] for r in rows])
    print(f"{'':<16} k = {k:.2f} over the file length; 20 min / 10 s: "
          f"{rows[-1][1] / rows[0][1]:.2f}x seeking, {rows[-1][2] / rows[0][2]:.0f}x decoding "
          "the whole file")


def median_time(function, args: tuple, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*args)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,20000,50000", help="files per tree")
    parser.add_argument("--crop-repeats", type=int, default=30)
    parser.add_argument("--cache-share", type=int, default=50,
                        help="the feature stages take one in this many of a tree's files")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"which parts to run (default all: {','.join(PARTS)})")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.tree, args.size)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{os.cpu_count()} cores; trees of {', '.join(f'{n:,}' for n in sizes)} hard links "
          f"to {FLAC.name}; peak memory above what the process held before the stage")
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        trees = [build_tree(folder, n) for n in sizes]
        if "pretrain" in parts:
            pretraining(trees, sizes)
        if "lengths" in parts:
            results = [[measure(stage, tree, n) for tree, n in zip(trees, sizes)]
                       for stage in ("lengths-first", "lengths-later")]
            for stage, found in zip(("lengths-first", "lengths-later"), results):
                print_stage(stage, sizes, found)
        if "features" in parts:
            feature_stages(trees, [n // args.cache_share for n in sizes])
        if "crop" in parts:
            crop_costs(folder, args.crop_repeats)
    if "bootstrap" in parts:
        bootstrap_stage()


def pretraining(trees: list[Path], sizes: list[int]) -> None:
    """The pre-training stages, tree by tree (each needs the manifest of its tree)."""
    stages = [stage for stage in STAGES if not stage.startswith("lengths")]
    results = {stage: [] for stage in stages}
    for tree, n in zip(trees, sizes):
        for stage in stages:
            results[stage].append(measure(stage, tree, n))
    for stage in ("manifest", "check-start", "check-resume", "train-start", "train-resume"):
        print_stage(stage, sizes, results[stage])
    start, resume = ([r["seconds"] for r in results[stage]]
                     for stage in ("train-start", "train-resume"))
    print(f"{'':<16} time to the first update at {sizes[-1]:,} files / at {sizes[0]:,}: "
          f"{start[-1] / start[0]:.2f}x at the start, {resume[-1] / resume[0]:.2f}x at a "
          "resume")
    print(f"{'loader':<16} " + "  ".join(f"{n:>7,}: {r['audio_per_s']:5.0f} audio-s/s"
                                         for n, r in zip(sizes, results["loader"])))
    print_workers(sizes, results)


def feature_stages(trees: list[Path], feature_sizes: list[int]) -> None:
    features = {stage: [measure(stage, tree, n) for tree, n in zip(trees, feature_sizes)]
                for stage in FEATURE_STAGES}
    for stage in FEATURE_STAGES:
        print_stage(stage, feature_sizes, features[stage])
    fill, read, plain = (sum(r["seconds"] for r in features[stage]) for stage in
                         ("cache-fill", "cache-read", "features-nocache"))
    print(f"{'':<16} filling the cache costs {fill / plain:.2f}x computing without it; "
          f"reading back {plain / read:.1f}x faster than computing")


def bootstrap_stage() -> None:
    trials = [n for n, _ in TRIALS]
    runs = [measure("bootstrap", Path("."), n) for n in trials]
    print(f"{'bootstrap':<16} " + "  ".join(
        f"{n:>7,} trials: {duration(r['seconds']):>6}, process peak {r['process_peak_mb']:4.0f} MB"
        for n, r in zip(trials, runs)))
    k, _ = fit(trials, [r["seconds"] for r in runs])
    print(f"{'':<16} k = {k:.2f} over the trials ({', '.join(str(s) for _, s in TRIALS)} "
          "speakers; 1000 resamples)")


if __name__ == "__main__":
    main()
