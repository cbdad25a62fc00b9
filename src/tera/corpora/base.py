"""What every corpus loader returns: utterances (a file or a segment of one) with labels."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from tera import effects
from tera.audio import load_audio
from tera.errors import UserError
from tera.runs.files import read_json


@dataclass(frozen=True)
class Utterance:
    """One labelled piece of audio.

    text: ASR transcript (upper-case words); phones: phone tokens (PR); label: the class of
    KS (one of the 12) or SID (the speaker). offset / num_samples select a segment of the
    file (the `_silence_` items of Speech Commands are 1 s cuts of background noise).

    gain_db and trim_silence are s3prl's sox effects, applied after reading (KS and ASV: a
    -3 dB gain; ASV: sox's `silence 1 0.1 0.1% -1 0.1 0.1%`). crop, (max_samples, seed),
    asks for a random window of at most max_samples of the processed audio, at an offset
    drawn from `seed` (training crops of SID, ASV and KS's `_silence_`): such an item is
    new audio at every draw, so it is never cached.
    """

    id: str
    path: Path
    speaker: str = ""
    text: str | None = None
    phones: tuple[str, ...] | None = None
    label: str | None = None
    offset: int = 0
    num_samples: int | None = None
    gain_db: float = 0.0
    trim_silence: bool = False
    crop: tuple[int, int] | None = None


def problem(problems: list[str] | None, message: str) -> None:
    """Report a problem of a corpus file: raise it (loading for a run), or, when a list is
    given (`tera corpus check`), add it there and go on, so that every problem is listed."""
    if problems is None:
        raise UserError(message)
    problems.append(message)


def read_segment(utt: Utterance) -> torch.Tensor:
    """The utterance's audio: 1-D float32 at 16 kHz (see `tera.audio.load_audio`), with its
    effects applied and its crop drawn."""
    wave = load_audio(utt.path, start=utt.offset, samples=utt.num_samples)
    wave = apply_effects(wave, utt.gain_db, utt.trim_silence)
    if len(wave) == 0:
        raise UserError(f"{utt.path}: silent throughout: nothing is left after sox's silence "
                        "removal")
    if utt.crop is not None:
        wave = random_crop(wave, *utt.crop)
    return wave


def apply_effects(wave: torch.Tensor, gain_db: float, trim_silence: bool) -> torch.Tensor:
    """s3prl's sox effects (`tera.effects`): a gain, then silence removal."""
    if gain_db == effects.S3PRL_GAIN_DB:  # s3prl's chain, on exact 32-bit samples
        return effects.s3prl_effects(wave, silence=trim_silence)
    if gain_db:
        wave = effects.gain(wave, gain_db)
    return effects.remove_silence(wave) if trim_silence else wave


def random_crop(wave: torch.Tensor, max_samples: int, seed: int) -> torch.Tensor:
    """A window of `max_samples` at an offset drawn from `seed` (the whole wave when it is
    no longer)."""
    if len(wave) <= max_samples:
        return wave
    start = random.Random(seed).randint(0, len(wave) - max_samples)
    return wave[start : start + max_samples]


def tera_home() -> Path:
    """tera-speech's own folder (corpora, feature cache, lengths): `$TERA_SPEECH_HOME`, else
    `~/.cache/tera-speech`. Not created here."""
    return Path(os.environ.get("TERA_SPEECH_HOME", Path.home() / ".cache" / "tera-speech"))


def default_corpus_dir(preset: str = "default") -> Path:
    """Where `tera corpus synth` puts the embedded corpus unless told otherwise."""
    return tera_home() / f"corpus-{preset}"


def is_embedded_corpus(root: Path) -> bool:
    """Whether `root` holds a generated embedded corpus (`tera corpus synth` writes its
    summary last)."""
    return (root / "summary.json").is_file()


# The embedded corpus generator (`tera.corpora.synthetic`) writes its version to summary.json.
# 1: one fixed filter per speaker, SID tested on the training sessions
# 2: channels per session, speaker traits per speaker, larger test sets, cross-session tests
GENERATOR_VERSION = 2


def read_summary(root: str | Path) -> dict:
    """The `summary.json` of an embedded corpus (what `tera corpus synth` made there)."""
    summary = read_json(Path(root) / "summary.json")
    if not isinstance(summary, dict):
        raise UserError(f"{Path(root) / 'summary.json'}: expected a JSON object")
    return summary


def generator_of(summary: dict) -> int:
    """The generator version that made a corpus (1 for a summary without one)."""
    return int(summary.get("generator", 1))


def check_generator(root: Path) -> None:
    """Refuse an embedded corpus made by another generator version: its speakers, channels
    and test sets are not the ones this version's recipes and documentation describe."""
    summary = read_summary(root)
    version = generator_of(summary)
    if version != GENERATOR_VERSION:
        raise UserError(
            f"{root}: an embedded corpus made by corpus generator {version}; this version of "
            f"tera-speech needs generator {GENERATOR_VERSION} (channels per session, larger "
            f"test sets). Make it again with `tera corpus synth {root} --preset "
            f"{summary.get('preset')} --seed {summary.get('seed')}`")
