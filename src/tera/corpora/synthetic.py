"""The embedded corpus: multi-speaker English speech made offline with espeak-ng, written in
the LibriSpeech, Speech Commands and VoxCeleb1 layouts so that the real loaders read it.

Why espeak-ng: a Debian package that installs in seconds (the setup script installs it),
about 100 voice variants over 7 English accents, far faster than real time, and it reports the
phonemes it actually spoke (`-x`), which become the phone transcripts for PR.

What a person keeps is the speaker's; what a recording brings is the session's:

- a **speaker** is a voice variant and accent, a base pitch and pitch range, a speaking rate
  and a vocal-tract length (a frequency warp of the whole signal, formants and pitch
  together);
- a **session** (a VoxCeleb video, a LibriSpeech chapter, a Speech Commands recording) draws
  its own channel: a microphone response (spectral tilt, a resonance, a band limit), a room
  (sometimes reverberant), a noise colour and level, and a recording level;
- each **utterance** jitters pitch and speed, the SNR and the level, and draws its noise.

So a filter cannot give a speaker away: the speaker identification and verification test
utterances come from sessions that the training split never saw, and the target trials of
the verification lists pair different sessions. Every random choice comes from (seed, part,
name): the corpus is the same for a seed. `GENERATOR_VERSION` is written to summary.json; a
cached corpus made by an older generator is made again (`synthesize`) or refused with a
message (`tera.corpora.base.check_generator`).

Three modules make it: `synthetic_speech` (speakers, sessions and the synthesiser),
`synthetic_layout` (the presets, and which utterance goes where) and this one (`synthesize`:
every utterance rendered into a folder written aside, then renamed into place).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from tera.corpora.base import (
    GENERATOR_VERSION,
    generator_of,
    is_embedded_corpus,
    read_summary,
)
from tera.corpora.synthetic_layout import (
    PRESETS,
    Job,
    librispeech_jobs,
    speech_commands_jobs,
    voxceleb_jobs,
    write_noise,
    write_voxceleb_lists,
)
from tera.corpora.synthetic_speech import RATE, espeak_available, record, speak
from tera.errors import UserError
from tera.runs.files import ensure_folder

# --- generation ------------------------------------------------------------------------------


def _render(job: Job, workdir: Path) -> tuple[Path, list[str], float]:
    """Speak, record and write one utterance: (its path, its phones, its seconds)."""
    rng = random.Random(str(job.seed))
    wave, phones = speak(job.speaker, job.text, rng, workdir)
    wave = record(wave, job.channel, rng)
    if job.min_seconds:  # keyword clips are exactly 1 s, the word placed at random
        size = int(job.min_seconds * RATE)
        wave = wave[:size]
        start = rng.randint(0, size - len(wave))
        clip = np.zeros(size, dtype=np.float32)
        clip[start : start + len(wave)] = wave
        floor = np.random.default_rng(rng.getrandbits(32)).standard_normal(size) * 1e-3
        wave = (clip + floor).astype(np.float32)
    job.path.parent.mkdir(parents=True, exist_ok=True)
    subtype = "PCM_16"
    sf.write(job.path, wave, RATE, subtype=subtype)
    return job.path, phones, len(wave) / RATE


def synthesize(out_dir: str | Path, preset: str = "default", seed: int = 0,
               workers: int = 2, progress: bool = True) -> dict:
    """Generate the corpus into `out_dir` (skipped if this generator already made it there
    for this preset and seed; made again if an older generator did) and return its
    summary."""
    if preset not in PRESETS:
        raise UserError(f"unknown corpus preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise UserError(f"corpus seed must be an integer from 0 to {MAX_SEED - 1}, got {seed!r}")
    out_dir = checked_output_folder(out_dir)
    if is_embedded_corpus(out_dir):
        summary = read_summary(out_dir)
        if summary.get("preset") != preset or summary.get("seed") != seed:
            raise UserError(f"{out_dir} already holds a corpus of preset "
                            f"{summary.get('preset')} seed {summary.get('seed')}; choose "
                            "another folder")
        if generator_of(summary) == GENERATOR_VERSION:
            return summary
        print(f"{out_dir}: made by corpus generator {generator_of(summary)}; making it again "
              f"with generator {GENERATOR_VERSION}", file=sys.stderr)
    if not espeak_available():
        raise UserError("espeak-ng is not installed: run `bash scripts/setup.sh` (it installs "
                        "the Debian package) or `apt-get install espeak-ng`")
    partial = new_partial_folder(out_dir)
    try:
        summary = _generate(partial, preset, seed, workers, progress)
        replace_folder(partial, out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # ours: made by new_partial_folder
    return summary


def _generate(partial: Path, preset: str, seed: int, workers: int, progress: bool) -> dict:
    """Write the whole corpus into `partial` (a fresh folder) and return its summary."""
    spec = PRESETS[preset]
    started = time.perf_counter()

    libri_jobs, transcripts = librispeech_jobs(partial / "librispeech", spec, seed)
    ks_jobs, ks_lists = speech_commands_jobs(partial / "speech_commands", spec, seed)
    vox_jobs, vox_listing = voxceleb_jobs(partial / "voxceleb1", spec, seed)
    jobs = libri_jobs + ks_jobs + vox_jobs
    results: dict[Path, tuple[list[str], float]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, phones, seconds in tqdm(pool.map(lambda j: _render(j, partial), jobs),
                                          total=len(jobs), desc=f"corpus {preset}",
                                          unit="utt", disable=not progress,
                                          mininterval=0.5 if sys.stderr.isatty() else 30):
            results[path] = (phones, seconds)

    for stem, lines in transcripts.items():
        stem.with_name(stem.name + ".trans.txt").write_text(
            "".join(f"{utt_id} {text.upper()}\n" for utt_id, text in lines))
        stem.with_name(stem.name + ".phones.txt").write_text("".join(
            f"{utt_id} {' '.join(results[stem.parent / f'{utt_id}.flac'][0])}\n"
            for utt_id, _ in lines))
    ks_root = partial / "speech_commands"
    for name, rels in ks_lists.items():
        (ks_root / f"{name}_list.txt").write_text("".join(f"{r}\n" for r in rels))
    write_noise(ks_root, spec.noise_seconds, seed)
    write_voxceleb_lists(partial / "voxceleb1", vox_listing, spec, seed)

    def hours(jobs_of_part: list[Job]) -> float:
        return round(sum(results[j.path][1] for j in jobs_of_part) / 3600, 4)

    summary = {
        "preset": preset, "seed": seed, "generator": GENERATOR_VERSION, "engine": "espeak-ng",
        "sample_rate": RATE,
        "hours": {"librispeech": hours(libri_jobs), "speech_commands": hours(ks_jobs),
                  "voxceleb1": hours(vox_jobs)},
        "utterances": {
            "librispeech": {s: c * n for s, (c, n) in spec.libri.items()},
            "speech_commands": {"train": sum(1 for j in ks_jobs) - sum(map(len, ks_lists.values())),
                                "validation": len(ks_lists["validation"]),
                                "testing": len(ks_lists["testing"])},
            "voxceleb1": {
                **{f"iden_{split}": sum(1 for *_, s in vox_listing["iden"] if s == split)
                   for split in spec.sid_sessions},
                "verification_test": len(vox_listing["test"]),
                "verification_dev": len(vox_listing["dev"])},
        },
        "trials": {name: len((partial / "voxceleb1" / name).read_text().splitlines())
                   for name in ("veri_test2.txt", "veri_dev.txt")},
        "speakers": {"librispeech": sum(c for c, _ in spec.libri.values()),
                     "speech_commands": sum(spec.ks_speakers),
                     "voxceleb1": spec.sid_speakers + sum(c for c, _, _ in
                                                          spec.asv_speakers.values())},
        "generation_seconds": round(time.perf_counter() - started, 1),
    }
    summary["hours"]["total"] = round(sum(summary["hours"].values()), 4)
    (partial / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --- the output folder: written aside, renamed into place --------------------------------------
#
# The corpus is written into a fresh hidden folder beside the output and renamed into place
# when complete, so a run killed midway leaves no half corpus. Nothing is ever deleted that
# this module did not make: a folder holding anything but an earlier corpus is refused, and
# so are the working folder and its parents (replacing them would pull the floor from under
# the shell).

MAX_SEED = 2**63
PARTIAL_MARKER = ".tera-corpus-partial"  # in every folder new_partial_folder makes


def checked_output_folder(out_dir: str | Path) -> Path:
    """`out_dir` as an absolute path, or a `UserError` when writing the corpus there could
    delete something tera-speech did not write."""
    given = str(out_dir)
    folder = Path(out_dir).expanduser().resolve()
    if folder == Path(folder.anchor) or folder in (Path.cwd(), *Path.cwd().parents):
        raise UserError(f"{given}: is the working folder or holds it; give a new folder for "
                        "the corpus, e.g. ./corpus")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{given}: is a file; give a new folder for the corpus")
    if folder.is_dir() and not is_embedded_corpus(folder) and any(folder.iterdir()):
        raise UserError(f"{given}: holds files that are not a tera-speech corpus; give a new "
                        "or empty folder (nothing there was changed)")
    return folder


def new_partial_folder(out_dir: Path) -> Path:
    """A fresh, marked folder beside `out_dir` to write into; marked folders an interrupted
    run left there are removed first (only those: the marker says they are ours)."""
    parent = ensure_folder(out_dir.parent)
    for stale in parent.glob(f".{out_dir.name}.partial-*"):
        if (stale / PARTIAL_MARKER).is_file():
            shutil.rmtree(stale, ignore_errors=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=parent))
    (partial / PARTIAL_MARKER).touch()
    return partial


def replace_folder(partial: Path, out_dir: Path) -> None:
    """Move the finished `partial` to `out_dir`: empty or an earlier corpus (which goes)."""
    (partial / PARTIAL_MARKER).unlink()
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.rename(partial, out_dir)
        return
    if not is_embedded_corpus(out_dir):  # filled by someone else while we generated
        raise UserError(f"{out_dir}: files appeared there during generation; nothing "
                        "was changed, give a new folder")
    # An earlier corpus: swap it aside first, so that out_dir is never missing a corpus.
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.replace(out_dir, old / "corpus")
    os.rename(partial, out_dir)
    shutil.rmtree(old, ignore_errors=True)
