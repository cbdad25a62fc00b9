"""Peak memory and time of `tera extract` on long recordings (slim, all layers).

    python benchmarks/long_extract.py                       # 1, 5, 20 min, chunked (default)
    python benchmarks/long_extract.py --minutes 1 5 --whole  # the whole recording at once

Each run is a fresh `tera extract` process (a random slim model, `--layer all`, fp32) on a
recording made by repeating the LibriSpeech test utterance; its peak resident memory comes
from the kernel (`wait4` rusage, the high-water mark of the process), its time from the
wall clock. Prints a table and, with `--json`, one JSON object per run.
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
import soundfile as sf

UTTERANCE = Path(__file__).resolve().parents[1] / "tests" / "data" / \
    "librispeech-6313-76958-0021.flac"


def recording(minutes: float, folder: Path) -> Path:
    """`minutes` of speech at 16 kHz: the utterance repeated, as a float wav."""
    wave, rate = sf.read(UTTERANCE, dtype="float32")
    samples = int(minutes * 60 * rate)
    path = folder / f"speech_{minutes:g}min.wav"
    sf.write(path, np.resize(wave, samples), rate, subtype="FLOAT")
    return path


def run_extract(audio: Path, output: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "tera.cli", "extract", "-u", "tera2", "--precision", "fp32",
               str(audio), "-o", str(output), *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    error = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"tera extract failed ({code}):\n{error[-2000:]}")
    return {"peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "seconds": seconds,
            "output_gb": output.stat().st_size / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 20])
    parser.add_argument("--whole", action="store_true",
                        help="--chunk-seconds 0: the whole recording at once (the old path)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    extra = ["--chunk-seconds", "0"] if args.whole else []
    mode = "whole" if args.whole else "chunked (60 s, 10 s context)"
    print(f"tera extract, random slim, all layers, fp32, {mode}; "
          f"{os.cpu_count()} CPUs, torch threads default")
    print("| minutes | peak RSS (GB) | GB per minute | time (s) | x real time | .npz (GB) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for minutes in args.minutes:
            audio = recording(minutes, folder)
            result = run_extract(audio, folder / "out.npz", extra)
            (folder / "out.npz").unlink()
            audio.unlink()
            result.update(minutes=minutes, mode="whole" if args.whole else "chunked")
            print(f"| {minutes:g} | {result['peak_rss_gb']:.2f} | "
                  f"{result['peak_rss_gb'] / minutes:.2f} | {result['seconds']:.1f} | "
                  f"{minutes * 60 / result['seconds']:.1f} | {result['output_gb']:.2f} |",
                  flush=True)
            if args.json:
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
