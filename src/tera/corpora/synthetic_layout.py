"""The embedded corpus's layout: how many speakers, sessions and utterances each preset
has, and which utterance of which speaker in which session goes where in the LibriSpeech,
Speech Commands and VoxCeleb1 layouts (with their transcripts, lists and trials).

    jobs, transcripts = librispeech_jobs(root / "librispeech", PRESETS["small"], seed=0)

Every random choice comes from (seed, part, name), so a seed always gives the same corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from tera.corpora.speech_commands import WORDS
from tera.corpora.synthetic_speech import RATE, Channel, Speaker, make_channel, make_speaker
from tera.corpora.text import sentence

UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree",
                 "wow", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                 "nine")


@dataclass(frozen=True)
class Preset:
    """The size of an embedded corpus: speakers, sessions and utterances of each part."""

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
    name, so that the speakers of different splits are different voices (drawn from the
    position in the split, a test speaker would be a training speaker's twin)."""
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
    """VoxCeleb1's identification split file and its test and dev trial lists."""
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
    """Speech Commands' background noises (white, pink, a running tap), `seconds` long."""
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
