"""The embedded corpus: multi-speaker English speech made offline with espeak-ng, written in
the LibriSpeech, Speech Commands and VoxCeleb1 layouts so that the real loaders read it.

Why espeak-ng: a Debian package that installs in seconds (the setup script installs it),
about 100 voice variants over 7 English accents, ~10 ms per utterance, and it reports the
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
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal
from tqdm import tqdm

from tera.audio import resample
from tera.corpora.base import (
    GENERATOR_VERSION,
    generator_of,
    is_embedded_corpus,
    read_summary,
)
from tera.corpora.speech_commands import WORDS
from tera.corpora.text import sentence
from tera.errors import UserError
from tera.runs.files import ensure_folder

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
    sid_speakers: int
    # identification split -> (sessions per speaker, utterances per session); disjoint sessions
    sid_sessions: dict[str, tuple[int, int]]
    # verification list ("test", "dev") -> (speakers, sessions per speaker, utterances per
    # session); every target pair crosses sessions
    asv_speakers: dict[str, tuple[int, int, int]]
    non_targets_per_utterance: dict[str, int]  # list -> non-target trials per utterance
    sentences_per_vox_utterance: int = 1
    extra: dict = field(default_factory=dict)


PRESETS = {
    "small": Preset(libri={"train": (6, 5), "dev": (2, 3), "test": (2, 3)},
                    ks_speakers=(6, 2, 2), ks_unknown_per_speaker=3, noise_seconds=8,
                    sid_speakers=5, sid_sessions={"train": (2, 2), "dev": (1, 1),
                                                  "test": (1, 2)},
                    asv_speakers={"test": (4, 2, 2), "dev": (4, 2, 2)},
                    non_targets_per_utterance={"test": 2, "dev": 2}),
    "default": Preset(libri={"train": (40, 25), "dev": (10, 20), "test": (25, 20)},
                      ks_speakers=(48, 20, 64), ks_unknown_per_speaker=6, noise_seconds=60,
                      sid_speakers=40, sid_sessions={"train": (4, 3), "dev": (1, 4),
                                                     "test": (3, 5)},
                      asv_speakers={"test": (40, 3, 3), "dev": (20, 2, 4)},
                      non_targets_per_utterance={"test": 12, "dev": 8},
                      sentences_per_vox_utterance=2),
}


@dataclass(frozen=True)
class Speaker:
    """What a person keeps from one recording to the next."""

    name: str
    voice: str  # espeak-ng accent + voice variant
    pitch: int  # espeak-ng pitch, 0-99
    pitch_range: int  # % of the voice's intonation range
    speed: int  # words per minute
    warp: float  # vocal-tract length: every frequency x warp (formants and pitch)


@dataclass(frozen=True)
class Channel:
    """What one recording session brings: microphone, room, noise and level."""

    tilt: float  # first-order spectral tilt coefficient
    resonance_hz: float
    resonance_db: float
    low_cut_hz: float
    high_cut_hz: float
    room_rt60: float  # 0: no reverberation
    room_seed: int  # the room's impulse response
    noise_colour: float  # 0 white .. 0.95 brown
    snr_db: float
    level: float


def make_speaker(name: str, rng: random.Random) -> Speaker:
    return Speaker(
        name=name,
        voice=f"{rng.choice(ACCENTS)}+{rng.choice(VARIANTS)}",
        pitch=rng.randint(15, 85),
        pitch_range=rng.randint(40, 200),
        speed=rng.randint(135, 185),
        warp=rng.uniform(0.88, 1.14),
    )


def make_channel(rng: random.Random) -> Channel:
    return Channel(
        tilt=rng.uniform(-0.6, 0.6),
        resonance_hz=rng.uniform(400, 3500),
        resonance_db=rng.uniform(-8, 8),
        low_cut_hz=rng.uniform(40, 300),
        high_cut_hz=rng.choice([rng.uniform(3400, 5000), rng.uniform(5000, 7800)]),
        room_rt60=rng.uniform(0.15, 0.6) if rng.random() < 0.4 else 0.0,
        room_seed=rng.getrandbits(32),
        noise_colour=rng.choice([0.0, rng.uniform(0.5, 0.95)]),
        snr_db=rng.uniform(12, 35),
        level=rng.uniform(0.3, 0.9),
    )


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(speaker: Speaker, text: str, rng: random.Random, workdir: Path
          ) -> tuple[np.ndarray, list[str]]:
    """Synthesise `text` (lower case) as `speaker`: (16 kHz float waveform, spoken phones)."""
    tmp = workdir / f"tts_{os.getpid()}_{rng.getrandbits(48)}.wav"
    command = ["espeak-ng", "-m", "-v", speaker.voice,
               "-p", str(min(99, max(0, speaker.pitch + rng.randint(-6, 6)))),
               "-s", str(speaker.speed + rng.randint(-12, 12)),
               "-x", "--sep= ", "-w", str(tmp),
               f'<prosody range="{speaker.pitch_range}%">{text}</prosody>']
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
        wave, rate = sf.read(tmp, dtype="float32")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        raise UserError(f"espeak-ng failed on {text!r} with voice {speaker.voice}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    phones = [p.strip(STRESS_MARKS) for p in done.stdout.split()]
    # the vocal tract: played `warp` times faster, every frequency scales by `warp`
    return resample(wave, round(rate * speaker.warp), RATE), [p for p in phones if p]


def record(wave: np.ndarray, channel: Channel, rng: random.Random) -> np.ndarray:
    """The session's microphone and room, then its noise and level (jittered per
    utterance)."""
    wave = signal.lfilter([1.0, -channel.tilt], [1.0], wave)
    b, a = _peaking_filter(channel.resonance_hz, channel.resonance_db, q=1.2)
    wave = signal.lfilter(b, a, wave)
    band = signal.butter(2, [channel.low_cut_hz, channel.high_cut_hz], btype="bandpass",
                         fs=RATE, output="sos")
    wave = signal.sosfilt(band, wave)
    if channel.room_rt60:
        wave = _reverberate(wave, channel.room_rt60, random.Random(channel.room_seed))
    wave = wave / (np.abs(wave).max() + 1e-9) * channel.level * rng.uniform(0.8, 1.2)
    snr_db = channel.snr_db + rng.uniform(-3, 3)
    noise = np.random.default_rng(rng.getrandbits(32)).standard_normal(len(wave))
    if channel.noise_colour:
        noise = signal.lfilter([1.0], [1.0, -channel.noise_colour], noise)
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
    """One utterance to synthesise, the session it was recorded in and where it goes."""

    path: Path
    speaker: Speaker
    channel: Channel
    text: str
    seed: tuple
    min_seconds: float = 0.0


def _speakers(prefix: str, count: int, seed: int, start: int) -> list[Speaker]:
    """Speakers `prefix + number` for numbers start, start + 1, ...: each drawn from its own
    name, so that the speakers of different splits are different voices (generator 1 drew
    from the position in the split: a test speaker was a training speaker's twin)."""
    names = [f"{prefix}{start + i}" for i in range(count)]
    return [make_speaker(name, random.Random(f"{seed}/speaker/{name}")) for name in names]


def _channel(seed: int, session: str) -> Channel:
    return make_channel(random.Random(f"{seed}/session/{session}"))


def librispeech_jobs(root: Path, preset: Preset, seed: int) -> tuple[list[Job], dict]:
    """One chapter (session) per speaker and split; speakers disjoint across splits."""
    jobs, transcripts = [], {}
    next_speaker = 100
    for split, (count, per_speaker) in preset.libri.items():
        for speaker in _speakers("", count, seed, next_speaker):
            chapter = 1000 + int(speaker.name)
            channel = _channel(seed, f"libri/{speaker.name}-{chapter}")
            folder = root / split / speaker.name / str(chapter)
            for n in range(per_speaker):
                rng = random.Random(f"{seed}/libri/{speaker.name}/{n}")
                utt_id = f"{speaker.name}-{chapter}-{n:04d}"
                text = sentence(rng)
                jobs.append(Job(folder / f"{utt_id}.flac", speaker, channel, text,
                                (seed, utt_id)))
                transcripts.setdefault(folder / f"{speaker.name}-{chapter}", []).append(
                    (utt_id, text))
        next_speaker += count
    return jobs, transcripts


def speech_commands_jobs(root: Path, preset: Preset, seed: int) -> tuple[list[Job], dict]:
    """Every clip is a recording of its own (its own channel); speakers disjoint across
    splits."""
    jobs, lists = [], {"validation": [], "testing": []}
    counts = preset.ks_speakers
    split_of = ["train"] * counts[0] + ["validation"] * counts[1] + ["testing"] * counts[2]
    for index, speaker in enumerate(_speakers("ks", sum(counts), seed, 0)):
        speaker_hash = f"{random.Random(f'{seed}/ks-hash/{index}').getrandbits(32):08x}"
        rng = random.Random(f"{seed}/ks/{index}")
        words = list(WORDS) + rng.sample(UNKNOWN_WORDS, preset.ks_unknown_per_speaker)
        for word in words:
            rel = f"{word}/{speaker_hash}_nohash_0.wav"
            jobs.append(Job(root / rel, speaker, _channel(seed, f"ks/{rel}"), word, (seed, rel),
                            min_seconds=1.0))
            if split_of[index] != "train":
                lists[split_of[index]].append(rel)
    return jobs, lists


def voxceleb_jobs(root: Path, preset: Preset, seed: int) -> tuple[list[Job], dict]:
    """Sessions ("videos") per speaker: the identification speakers' sessions are split
    between train, dev and test; the verification speakers (test, dev lists) are held out.
    `listing[group]` holds (speaker, session number, path, split) rows."""
    jobs, listing = [], {"iden": [], "test": [], "dev": []}
    splits = [split for split, (sessions, _) in preset.sid_sessions.items()
              for _ in range(sessions)]
    per_session = {split: utts for split, (_, utts) in preset.sid_sessions.items()}
    groups = [("iden", preset.sid_speakers, [(s, per_session[s]) for s in splits])]
    for group in ("test", "dev"):
        count, sessions, utts = preset.asv_speakers[group]
        groups.append((group, count, [(group, utts)] * sessions))
    start = 10001
    for group, count, sessions in groups:
        for speaker in _speakers("id", count, seed, start):
            for session, (split, utts) in enumerate(sessions):
                video = f"{random.Random(f'{seed}/{speaker.name}/{session}').getrandbits(40):010x}"
                channel = _channel(seed, f"vox/{speaker.name}/{video}")
                for n in range(utts):
                    rel = f"{speaker.name}/{video}/{n + 1:05d}.wav"
                    rng = random.Random(f"{seed}/vox/{rel}")
                    sentences = preset.sentences_per_vox_utterance
                    text = " ".join(sentence(rng) for _ in range(sentences))
                    jobs.append(Job(root / "wav" / rel, speaker, channel, text, (seed, rel)))
                    listing[group].append((speaker.name, session, rel, split))
        start += count
    return jobs, listing


def write_voxceleb_lists(root: Path, listing: dict, preset: Preset, seed: int) -> None:
    codes = {"train": "1", "dev": "2", "test": "3"}
    lines = [f"{codes[split]} {rel}" for _, _, rel, split in listing["iden"]]
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    for group, name in (("test", "veri_test2.txt"), ("dev", "veri_dev.txt")):
        trials = verification_trials(listing[group], preset.non_targets_per_utterance[group],
                                     random.Random(f"{seed}/trials/{group}"))
        (root / name).write_text("".join(f"{label} {a} {b}\n" for label, a, b in trials))


def verification_trials(utterances: list[tuple], non_targets: int, rng: random.Random
                        ) -> list[tuple[int, str, str]]:
    """Every pair of one speaker's utterances from different sessions as a target trial,
    and `non_targets` trials per utterance against other speakers' utterances."""
    trials = []
    for i, (speaker, session, rel, _) in enumerate(utterances):
        for other_speaker, other_session, other, _ in utterances[i + 1:]:
            if other_speaker == speaker and other_session != session:
                trials.append((1, rel, other))
        others = [r for s, _, r, _ in utterances if s != speaker]
        trials += [(0, rel, other) for other in rng.sample(others, min(non_targets, len(others)))]
    return trials


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

