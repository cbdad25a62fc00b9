"""Compare tera.effects with the sox binary on real and synthetic audio.

    python scripts/check_sox_effects.py [--random N] [--write-reference tests/data/sox]

For every input it runs s3prl's two chains through `sox` (KS: `gain -3.0`; ASV: `gain -3.0
silence 1 0.1 0.1% -1 0.1 0.1%`, both after `channels 1 rate 16000`, which do nothing on
16 kHz mono) and through `tera.effects.s3prl_effects`, and prints the length difference and
the largest sample difference in 32-bit units (1 unit = 2**-31). sox writes raw 32-bit
integers without dither (`-D`), which is what torchaudio's `apply_effects_file` hands back
as float32. Exit status 1 when any length differs or any float32 sample differs from sox's sample as
torchaudio converts it (integer / 2**31 rounded to float32; the printed difference is that
rounding). The sox binary is needed here only: the tests read the
reference this script writes with `--write-reference`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from tera.effects import FULL_SCALE, s3prl_effects

RATE = 16000
REAL = Path(__file__).resolve().parents[1] / "tests/data/librispeech-6313-76958-0021.flac"
GAIN = ["gain", "-3.0"]
SILENCE = ["silence", "1", "0.1", "0.1%", "-1", "0.1", "0.1%"]
SOX_CHAINS = {"KS": ["channels", "1", "rate", "16000", *GAIN],
              "ASV": ["channels", "1", "rate", "16000", *GAIN, *SILENCE]}


def run_sox(pcm16: np.ndarray, effects: list[str], workdir: Path) -> np.ndarray:
    """sox's 32-bit output samples for 16-bit input samples."""
    source, target = workdir / "in.flac", workdir / "out.raw"
    sf.write(source, pcm16, RATE, subtype="PCM_16")
    subprocess.run(["sox", "-D", "-V1", str(source), "-t", "raw", "-e", "signed-integer",
                    "-b", "32", str(target), *effects], check=True)
    return np.fromfile(target, dtype="<i4")


def ours(pcm16: np.ndarray, chain: str) -> np.ndarray:
    """tera.effects' float32 output."""
    return s3prl_effects(pcm16.astype(np.float32) / 32768, silence=chain == "ASV").numpy()


def compare(pcm16: np.ndarray, chain: str, workdir: Path) -> tuple[int, int, float, bool]:
    """(sox's output length, length difference, largest sample difference in 32-bit units,
    whether our float32 equals sox's samples as torchaudio's float32 conversion gives them)."""
    reference = run_sox(pcm16, SOX_CHAINS[chain], workdir)
    mine = ours(pcm16, chain)
    if len(reference) != len(mine):
        return len(reference), len(mine) - len(reference), float("nan"), False
    as_torchaudio = (reference / FULL_SCALE).astype(np.float32)
    diff = np.abs(mine.astype(np.float64) * FULL_SCALE - reference)
    max_diff = float(diff.max()) if diff.size else 0.0
    return len(reference), 0, max_diff, bool(np.array_equal(mine, as_torchaudio))


# --- inputs ----------------------------------------------------------------------------------


def real_utterance() -> np.ndarray:
    return sf.read(REAL, dtype="int16")[0]


def with_gaps(speech: np.ndarray, gaps: list[tuple[float, float, float]],
              rng: np.random.Generator) -> np.ndarray:
    """Insert (position s, length s, noise RMS in 16-bit units) gaps; RMS 0 = digital
    silence."""
    pieces, last = [], 0
    for position, length, noise_rms in sorted(gaps):
        cut = int(position * RATE)
        gap = rng.normal(0, noise_rms, int(length * RATE)) if noise_rms else np.zeros(
            int(length * RATE))
        pieces += [speech[last:cut], gap]
        last = cut
    pieces.append(speech[last:])
    return np.clip(np.round(np.concatenate(pieces)), -32768, 32767).astype(np.int16)


def named_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    speech = real_utterance()
    # After gain -3 dB the 0.1 % threshold is an RMS of about 46 in 16-bit units of the input.
    return {
        "real": speech,
        "real, digital gaps 0.05-1 s": with_gaps(speech, [
            (1.0, 0.05, 0), (2.0, 0.099, 0), (3.0, 0.1, 0), (4.0, 0.1001, 0),
            (5.0, 0.15, 0), (6.5, 0.3, 0), (8.0, 1.0, 0)], rng),
        "real, noise gaps around the threshold": with_gaps(speech, [
            (1.0, 0.2, 20), (2.5, 0.3, 40), (4.0, 0.3, 46), (5.5, 0.3, 47),
            (7.0, 0.5, 60), (9.0, 0.12, 100)], rng),
        "leading and trailing silence": with_gaps(speech, [(0.0, 1.5, 0), (11.9, 2.0, 0)], rng),
        "leading and trailing low noise": with_gaps(speech, [(0.0, 1.0, 10), (11.9, 1.0, 30)],
                                                    rng),
        "all silent": np.zeros(RATE, dtype=np.int16),
        "quiet noise only": with_gaps(np.zeros(0, np.int16), [(0.0, 2.0, 30)], rng),
        "loud but shorter than 0.1 s": speech[40000:41500],
        "shorter than the RMS window": speech[40000:40200],
        "soft onsets within 20 ms of a restart": soft_onsets_after_restarts(rng),
        "one loud burst in silence": with_gaps(speech[40000:42000], [(0.0, 0.5, 0),
                                                                     (0.125, 0.5, 0)], rng),
    }


def soft_onsets_after_restarts(rng: np.random.Generator) -> np.ndarray:
    """Noise just under the threshold for 0.1 s and a little more, then a tone just over it:
    sox empties its RMS window 0.1 s into the noise, so the onset is measured on a partly
    empty window (a full one would find it sooner)."""
    pieces = []
    for gap in (1650, 1700, 1800, 1900, 1919, 1920, 1950):
        pieces += [rng.normal(0, 3000, 4000), rng.normal(0, 40, gap),
                   55 * np.sqrt(2) * np.sin(2 * np.pi * 440 * np.arange(4800) / RATE)]
    return np.clip(np.round(np.concatenate(pieces)), -32768, 32767).astype(np.int16)


def random_input(rng: np.random.Generator) -> np.ndarray:
    """Alternating tones, noise and gaps of random lengths and levels near the threshold."""
    pieces = []
    for _ in range(rng.integers(1, 12)):
        length = int(rng.choice([rng.integers(1, 400), rng.integers(400, 2400),
                                 rng.integers(2400, 12000)]))
        level = float(rng.choice([0, rng.uniform(20, 80), rng.uniform(80, 20000)]))
        kind = rng.integers(3)
        t = np.arange(length) / RATE
        if kind == 0:
            piece = level * np.sqrt(2) * np.sin(2 * np.pi * rng.uniform(50, 4000) * t)
        elif kind == 1:
            piece = rng.normal(0, level, length)
        else:
            piece = np.zeros(length)
        pieces.append(piece)
    return np.clip(np.round(np.concatenate(pieces)), -32768, 32767).astype(np.int16)


# --- reference for the tests -----------------------------------------------------------------


def reference_input(rng: np.random.Generator) -> np.ndarray:
    """About 2.6 s: real speech with leading silence, a short gap (kept), a noise gap near the
    threshold, two soft onsets just after sox's restart (see `soft_onsets_after_restarts`), a
    long gap (removed), a 75 ms burst (dropped), trailing short silence."""
    speech = real_utterance()
    tone = 55 * np.sqrt(2) * np.sin(2 * np.pi * 440 * np.arange(3200) / RATE)
    pieces = [
        np.zeros(3000), speech[20000:26000], np.zeros(1500), speech[36000:41000],
        rng.normal(0, 45, 4000), speech[60000:64000],
        rng.normal(0, 3000, 2000), rng.normal(0, 40, 1700), tone,
        rng.normal(0, 3000, 2000), rng.normal(0, 40, 1900), tone,
        np.zeros(5000), speech[76000:77200], np.zeros(2000), speech[90000:94000],
        np.zeros(1000),
    ]
    return np.clip(np.round(np.concatenate(pieces)), -32768, 32767).astype(np.int16)


def write_reference(folder: Path, workdir: Path) -> None:
    rng = np.random.default_rng(21)
    pcm16 = reference_input(rng)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "s3prl_effects.npz", input=pcm16,
                        ks=run_sox(pcm16, SOX_CHAINS["KS"], workdir),
                        asv=run_sox(pcm16, SOX_CHAINS["ASV"], workdir))
    print(f"wrote {folder / 's3prl_effects.npz'} ({len(pcm16)} input samples)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=200, help="random synthetic inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-reference", type=Path, help="folder for the test reference")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print(f"{'input':42s} {'chain':5s} {'samples':>8s} {'sox out':>8s} {'len diff':>8s} "
              f"{'max diff':>9s}")
        for name, pcm16 in named_inputs(rng).items():
            for chain in SOX_CHAINS:
                out, length_diff, max_diff, ok = compare(pcm16, chain, workdir)
                failures += not ok
                print(f"{name:42s} {chain:5s} {len(pcm16):8d} {out:8d} {length_diff:8d} "
                      f"{max_diff:9.1f}{'' if ok else '  MISMATCH'}")
        worst_length, worst_diff, random_failures, trimmed = 0, 0.0, 0, 0
        for _ in range(args.random):
            pcm16 = random_input(rng)
            for chain in SOX_CHAINS:
                out, length_diff, max_diff, ok = compare(pcm16, chain, workdir)
                random_failures += not ok
                trimmed += chain == "ASV" and 0 < out < len(pcm16)
                worst_length = max(worst_length, abs(length_diff))
                worst_diff = max(worst_diff, 0.0 if np.isnan(max_diff) else max_diff)
        failures += random_failures
        print(f"{args.random} random inputs x 2 chains: {random_failures} mismatches, "
              f"largest length difference {worst_length}, largest sample difference "
              f"{worst_diff:.1f}; sox shortened {trimmed} of them without emptying them")
        if args.write_reference:
            write_reference(args.write_reference, workdir)
    print("all match" if not failures else f"{failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
