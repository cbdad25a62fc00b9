"""The embedded corpus: multi-speaker English speech made offline with espeak-ng, written in
the LibriSpeech, Speech Commands and VoxCeleb1 layouts so that the real loaders read it.

Why espeak-ng: a Debian package that installs in seconds (the setup script installs it),
about 100 voice variants over 7 English accents, ~10 ms per utterance, and it reports the
phonemes it actually spoke (`-x`), which become the phone transcripts for PR.

A speaker is a voice variant and accent, a base pitch and speed, and a fixed "timbre" filter
(a spectral tilt and a resonance). Each utterance jitters pitch and speed, adds noise at a
random SNR and sometimes reverberation, so that the tasks are learnable but not trivial.
Every random choice comes from (seed, part, index): the corpus is the same for a seed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal
from tqdm import tqdm

from tera.audio import resample
from tera.corpora.speech_commands import WORDS
from tera.corpora.text import sentence
from tera.errors import UserError

VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "klatt4", "croak", "whisper")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd")
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree",
                 "wow", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                 "nine")
STRESS_MARKS = "',%="
RATE = 16000


@dataclass(frozen=True)
class Preset:
    libri: dict[str, tuple[int, int]]  # split -> (speakers, utterances per speaker)
    ks_speakers: tuple[int, int, int]  # train, valid, test speakers
    ks_unknown_per_speaker: int
    noise_seconds: int
    vox_identification: tuple[int, int, int]  # speakers, sessions, utterances per session
    vox_verification: tuple[int, int, int]  # test speakers, dev speakers, utts per speaker
    sentences_per_vox_utterance: int = 1
    extra: dict = field(default_factory=dict)


PRESETS = {
    "small": Preset(libri={"train": (6, 5), "dev": (2, 3), "test": (2, 3)},
                    ks_speakers=(6, 2, 2), ks_unknown_per_speaker=3, noise_seconds=8,
                    vox_identification=(5, 2, 3), vox_verification=(4, 4, 3)),
    "default": Preset(libri={"train": (40, 25), "dev": (8, 10), "test": (8, 10)},
                      ks_speakers=(48, 8, 8), ks_unknown_per_speaker=6, noise_seconds=40,
                      vox_identification=(40, 3, 5), vox_verification=(12, 10, 8),
                      sentences_per_vox_utterance=2),
}


@dataclass(frozen=True)
class Speaker:
    name: str
    voice: str
    pitch: int
    speed: int
    tilt: float  # first-order spectral tilt coefficient
    resonance_hz: float
    resonance_db: float


def make_speaker(name: str, rng: random.Random) -> Speaker:
    return Speaker(
        name=name,
        voice=f"{rng.choice(ACCENTS)}+{rng.choice(VARIANTS)}",
        pitch=rng.randint(15, 85),
        speed=rng.randint(135, 185),
        tilt=rng.uniform(-0.6, 0.6),
        resonance_hz=rng.uniform(400, 3500),
        resonance_db=rng.uniform(-8, 8),
    )


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(speaker: Speaker, text: str, rng: random.Random, workdir: Path
          ) -> tuple[np.ndarray, list[str]]:
    """Synthesise `text` (lower case) as `speaker`: (16 kHz float waveform, spoken phones)."""
    tmp = workdir / f"tts_{os.getpid()}_{rng.getrandbits(48)}.wav"
    command = ["espeak-ng", "-v", speaker.voice,
               "-p", str(min(99, max(0, speaker.pitch + rng.randint(-6, 6)))),
               "-s", str(speaker.speed + rng.randint(-12, 12)),
               "-x", "--sep= ", "-w", str(tmp), text]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
        wave, rate = sf.read(tmp, dtype="float32")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        raise UserError(f"espeak-ng failed on {text!r} with voice {speaker.voice}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    phones = [p.strip(STRESS_MARKS) for p in done.stdout.split()]
    return resample(wave, rate, RATE), [p for p in phones if p]


def color(wave: np.ndarray, speaker: Speaker, rng: random.Random) -> np.ndarray:
    """Speaker timbre, then the recording: reverberation (sometimes), noise, level."""
    wave = signal.lfilter([1.0, -speaker.tilt], [1.0], wave)
    b, a = _peaking_filter(speaker.resonance_hz, speaker.resonance_db, q=1.2)
    wave = signal.lfilter(b, a, wave)
    if rng.random() < 0.3:
        wave = _reverberate(wave, rt60=rng.uniform(0.15, 0.5), rng=rng)
    wave = wave / (np.abs(wave).max() + 1e-9) * rng.uniform(0.3, 0.9)
    snr_db = rng.uniform(12, 35)
    noise = np.random.default_rng(rng.getrandbits(32)).standard_normal(len(wave))
    if rng.random() < 0.5:  # brown-ish noise as often as white
        noise = signal.lfilter([1.0], [1.0, -0.95], noise)
    power = np.mean(wave**2) + 1e-12
    noise *= np.sqrt(power / (np.mean(noise**2) + 1e-12) / 10 ** (snr_db / 10))
    return np.clip(wave + noise, -1.0, 1.0).astype(np.float32)


def _peaking_filter(freq: float, gain_db: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    amplitude = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * freq / RATE
    alpha = np.sin(w0) / (2 * q)
    b = [1 + alpha * amplitude, -2 * np.cos(w0), 1 - alpha * amplitude]
    a = [1 + alpha / amplitude, -2 * np.cos(w0), 1 - alpha / amplitude]
    return np.array(b) / a[0], np.array(a) / a[0]


def _reverberate(wave: np.ndarray, rt60: float, rng: random.Random) -> np.ndarray:
    length = int(rt60 * RATE)
    t = np.arange(length) / RATE
    noise = np.random.default_rng(rng.getrandbits(32)).standard_normal(length)
    response = noise * np.exp(-6.9 * t / rt60)
    response[0] = 1.0 / 0.3  # a strong direct path
    wet = signal.fftconvolve(wave, response)[: len(wave)]
    return wet / (np.abs(wet).max() + 1e-9)


# --- the three parts -------------------------------------------------------------------------


@dataclass
class Job:
    """One utterance to synthesise and where it goes."""

    path: Path
    speaker: Speaker
    text: str
    seed: tuple
    min_seconds: float = 0.0


def _speakers(prefix: str, count: int, seed: int, start: int) -> list[Speaker]:
    return [make_speaker(f"{prefix}{start + i}", random.Random(f"{seed}/{prefix}/{i}"))
            for i in range(count)]


def librispeech_jobs(root: Path, preset: Preset, seed: int) -> tuple[list[Job], dict]:
    jobs, transcripts = [], {}
    next_speaker = 100
    for split, (count, per_speaker) in preset.libri.items():
        for speaker in _speakers("", count, seed, next_speaker):
            chapter = 1000 + int(speaker.name)
            folder = root / split / speaker.name / str(chapter)
            for n in range(per_speaker):
                rng = random.Random(f"{seed}/libri/{speaker.name}/{n}")
                utt_id = f"{speaker.name}-{chapter}-{n:04d}"
                text = sentence(rng)
                jobs.append(Job(folder / f"{utt_id}.flac", speaker, text, (seed, utt_id)))
                transcripts.setdefault(folder / f"{speaker.name}-{chapter}", []).append(
                    (utt_id, text))
        next_speaker += count
    return jobs, transcripts


def speech_commands_jobs(root: Path, preset: Preset, seed: int) -> tuple[list[Job], dict]:
    jobs, lists = [], {"validation": [], "testing": []}
    counts = preset.ks_speakers
    split_of = ["train"] * counts[0] + ["validation"] * counts[1] + ["testing"] * counts[2]
    for index, speaker in enumerate(_speakers("ks", sum(counts), seed, 0)):
        speaker_hash = f"{random.Random(f'{seed}/ks-hash/{index}').getrandbits(32):08x}"
        rng = random.Random(f"{seed}/ks/{index}")
        words = list(WORDS) + rng.sample(UNKNOWN_WORDS, preset.ks_unknown_per_speaker)
        for word in words:
            rel = f"{word}/{speaker_hash}_nohash_0.wav"
            jobs.append(Job(root / rel, speaker, word, (seed, rel), min_seconds=1.0))
            if split_of[index] != "train":
                lists[split_of[index]].append(rel)
    return jobs, lists


def voxceleb_jobs(root: Path, preset: Preset, seed: int) -> tuple[list[Job], dict]:
    jobs, listing = [], {"iden": [], "test": [], "dev": []}
    speakers_id, sessions, per_session = preset.vox_identification
    test_count, dev_count, per_speaker = preset.vox_verification
    groups = [("iden", speakers_id, sessions, per_session), ("test", test_count, 2, per_speaker // 2
              + per_speaker % 2), ("dev", dev_count, 2, per_speaker // 2 + per_speaker % 2)]
    start = 10001
    for group, count, session_count, utts in groups:
        for speaker in _speakers("id", count, seed, start):
            for session in range(session_count):
                video = f"{random.Random(f'{seed}/{speaker.name}/{session}').getrandbits(40):010x}"
                for n in range(utts):
                    rel = f"{speaker.name}/{video}/{n + 1:05d}.wav"
                    rng = random.Random(f"{seed}/vox/{rel}")
                    sentences = preset.sentences_per_vox_utterance
                    text = " ".join(sentence(rng) for _ in range(sentences))
                    jobs.append(Job(root / "wav" / rel, speaker, text, (seed, rel)))
                    listing[group].append((speaker.name, rel, n))
        start += count
    return jobs, listing


def write_voxceleb_lists(root: Path, listing: dict, seed: int) -> None:
    lines = []
    for _, rel, n in listing["iden"]:
        code = {0: "3", 1: "2"}.get(n, "1")  # utterance 1 test, 2 dev, the rest train
        lines.append(f"{code} {rel}")
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    for group, name in (("test", "veri_test2.txt"), ("dev", "veri_dev.txt")):
        rng = random.Random(f"{seed}/trials/{group}")
        utts = listing[group]
        trials = []
        for speaker, rel, _ in utts:
            same = [r for s, r, _ in utts if s == speaker and r != rel]
            other = [r for s, r, _ in utts if s != speaker]
            for partner in rng.sample(same, min(2, len(same))):
                trials.append(f"1 {rel} {partner}")
            for partner in rng.sample(other, min(2, len(other))):
                trials.append(f"0 {rel} {partner}")
        (root / name).write_text("\n".join(trials) + "\n")


def write_noise(root: Path, seconds: int, seed: int) -> None:
    folder = root / "_background_noise_"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    length = seconds * RATE
    white = rng.standard_normal(length)
    noises = {
        "white_noise": white,
        "pink_noise": signal.lfilter([0.05, -0.05], [1, -1.9, 0.9], rng.standard_normal(length)),
        "running_tap": signal.lfilter([1.0], [1.0, -0.7], rng.standard_normal(length))
        * (1 + 0.3 * np.sin(np.arange(length) / 900)),
    }
    for name, noise in noises.items():
        noise = noise / (np.abs(noise).max() + 1e-9) * rng.uniform(0.1, 0.4)
        sf.write(folder / f"{name}.wav", noise.astype(np.float32), RATE, subtype="PCM_16")


# --- generation ------------------------------------------------------------------------------


def _render(job: Job, workdir: Path) -> tuple[Path, list[str], float]:
    rng = random.Random(str(job.seed))
    wave, phones = speak(job.speaker, job.text, rng, workdir)
    wave = color(wave, job.speaker, rng)
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
    """Generate the corpus into `out_dir` (skipped if it is already there for this preset
    and seed) and return its summary."""
    if preset not in PRESETS:
        raise UserError(f"unknown corpus preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out_dir = Path(out_dir)
    summary_path = out_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("preset") == preset and summary.get("seed") == seed:
            return summary
        raise UserError(f"{out_dir} already holds a corpus of preset {summary.get('preset')} "
                        f"seed {summary.get('seed')}; choose another folder")
    if not espeak_available():
        raise UserError("espeak-ng is not installed: run `bash scripts/setup.sh` (it installs "
                        "the Debian package) or `apt-get install espeak-ng`")
    spec = PRESETS[preset]
    started = time.perf_counter()
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)

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
    write_voxceleb_lists(partial / "voxceleb1", vox_listing, seed)

    def hours(jobs_of_part: list[Job]) -> float:
        return round(sum(results[j.path][1] for j in jobs_of_part) / 3600, 4)

    summary = {
        "preset": preset, "seed": seed, "engine": "espeak-ng", "sample_rate": RATE,
        "hours": {"librispeech": hours(libri_jobs), "speech_commands": hours(ks_jobs),
                  "voxceleb1": hours(vox_jobs)},
        "utterances": {
            "librispeech": {s: c * n for s, (c, n) in spec.libri.items()},
            "speech_commands": {"train": sum(1 for j in ks_jobs) - sum(map(len, ks_lists.values())),
                                "validation": len(ks_lists["validation"]),
                                "testing": len(ks_lists["testing"])},
            "voxceleb1": {g: len(v) for g, v in vox_listing.items()},
        },
        "speakers": {"librispeech": sum(c for c, _ in spec.libri.values()),
                     "speech_commands": sum(spec.ks_speakers),
                     "voxceleb1": spec.vox_identification[0] + sum(spec.vox_verification[:2])},
        "generation_seconds": round(time.perf_counter() - started, 1),
    }
    summary["hours"]["total"] = round(sum(summary["hours"].values()), 4)
    (partial / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(partial, out_dir)
    return summary
