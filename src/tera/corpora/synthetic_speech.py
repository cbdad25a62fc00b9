"""The embedded corpus's voices: speakers and recording sessions drawn at random, and the
synthesiser that speaks a text as a speaker (espeak-ng) and records it through a session's
microphone, room and noise (`tera.corpora.synthetic` says why, and what is whose).

    speaker = make_speaker("19", random.Random("0/speaker/19"))
    wave, phones = speak(speaker, "a cat sat", rng, workdir)     # 16 kHz, spoken phones
    wave = record(wave, make_channel(rng), rng)
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from tera.audio import resample
from tera.errors import UserError

VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "klatt4", "croak", "whisper")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd")
STRESS_MARKS = "',%="
RATE = 16000


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
    """A speaker called `name`, every trait drawn from `rng`."""
    return Speaker(
        name=name,
        voice=f"{rng.choice(ACCENTS)}+{rng.choice(VARIANTS)}",
        pitch=rng.randint(15, 85),
        pitch_range=rng.randint(40, 200),
        speed=rng.randint(135, 185),
        warp=rng.uniform(0.88, 1.14),
    )


def make_channel(rng: random.Random) -> Channel:
    """A recording session's channel, drawn from `rng`."""
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
    """Whether the espeak-ng binary is on the PATH."""
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
