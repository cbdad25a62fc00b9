"""Speech Commands v1 in SUPERB's 12-class setup: the 10 words below, every other word as
`_unknown_`, and `_silence_` as 1 s cuts of the `_background_noise_` recordings.

Layout: ROOT/<word>/<hash>_nohash_<n>.wav, ROOT/validation_list.txt and testing_list.txt
(paths relative to ROOT), ROOT/_background_noise_/*.wav. The test split is SUPERB's: the
separate test-set release (a folder per class, `_silence_` and `_unknown_` included), found
as ROOT/test/, ROOT/speech_commands_test_set_v0.01/ or ROOT/../speech_commands_test_set_v0.01;
real data needs it, the embedded corpus (which has none) uses testing_list.txt.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

from tera.audio import audio_info
from tera.corpora.base import Utterance
from tera.errors import UserError

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN, SILENCE = "_unknown_", "_silence_"
CLASSES = (*WORDS, UNKNOWN, SILENCE)
NOISE = "_background_noise_"
SEGMENT = 16000  # 1 s
SPLITS = ("train", "valid", "test")
MAX_CLIPS_PER_CLASS = 2**27 - 1  # the dataset README's constant of its hash split


def load_split(root: str | Path, split: str, *, split_rule: str = "lists",
               test_release: str = "optional", gain_db: float = 0.0) -> list[Utterance]:
    """The utterances of "train", "valid" or "test", each labelled with one of CLASSES.

    split_rule "hash": s3prl's split of the word folders by the hash of the speaker (10 %
    valid, the next 10 % dropped, the rest train), `_silence_` as the whole noise
    recordings (cropped at random when drawn; `valid` crops with fixed seeds); "lists":
    validation_list.txt / testing_list.txt, `_silence_` as fixed 1 s cuts, a third of every
    noise file per split. test_release "required": the test split is the separate test
    release or an error naming where it was looked for; "optional": testing_list.txt's files
    when there is none. gain_db: a gain every item gets when read (s3prl: -3 dB).
    """
    root = Path(root)
    if split not in SPLITS:
        raise UserError(f"unknown Speech Commands split {split!r}; expected one of {SPLITS}")
    if not root.is_dir():
        raise UserError(f"{root}: no such Speech Commands folder")
    if split == "test":
        items = _test_items(root, test_release)
    if split != "test" or items is None:
        items = (_hash_split(root, split) if split_rule == "hash"
                 else _listed_split(root, split))
    return [replace(u, gain_db=gain_db) for u in items] if gain_db else items


def _test_items(root: Path, test_release: str) -> list[Utterance] | None:
    release = _test_release(root)
    if release is not None:
        return _load_class_folders(release)
    if test_release == "required":
        looked = ", ".join(str(p) for p in _release_candidates(root))
        raise UserError(f"{root}: no Speech Commands test release (speech_commands_test_set_"
                        f"v0.01, SUPERB's test set) in {looked}; unpack it there")
    return None


def _word_files(root: Path):
    """(folder name, class, file) of every clip in the word folders."""
    for word_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if word_dir.name in (NOISE, "test") or word_dir.name.startswith("speech_commands_test"):
            continue
        label = word_dir.name if word_dir.name in WORDS else UNKNOWN
        for wav in sorted(word_dir.glob("*.wav")):
            yield word_dir.name, label, wav


def _clip(folder: str, label: str, wav: Path) -> Utterance:
    return Utterance(id=f"{folder}/{wav.name}", path=wav, speaker=wav.name.split("_")[0],
                     label=label)


def _listed_split(root: Path, split: str) -> list[Utterance]:
    listed = {name: _read_list(root / f"{name}_list.txt") for name in ("validation", "testing")}
    wanted = {"valid": listed["validation"], "test": listed["testing"]}.get(split)
    held_out = listed["validation"] | listed["testing"]
    items = []
    for folder, label, wav in _word_files(root):
        rel = f"{folder}/{wav.name}"
        if (wanted is not None and rel in wanted) or (wanted is None and rel not in held_out):
            items.append(_clip(folder, label, wav))
    if not items:
        raise UserError(f"{root}: no {split} utterances found")
    return items + silence_segments(root, split, count=max(1, len(items) // 11))


def hash_percentage(filename: str) -> float:
    """Where a clip's speaker falls in [0, 100): the split rule of the dataset's README, as
    s3prl's `split_dataset` computes it (SHA-1 of the name before `_nohash_`)."""
    speaker = re.sub(r"_nohash_.*$", "", filename)
    digest = int(hashlib.sha1(speaker.encode("utf-8")).hexdigest(), 16)
    return (digest % (MAX_CLIPS_PER_CLASS + 1)) * (100.0 / MAX_CLIPS_PER_CLASS)


def _hash_split(root: Path, split: str) -> list[Utterance]:
    if split == "test":
        raise UserError(f"{root}: the hash split has no test part (the test release is it)")
    items = []
    for folder, label, wav in _word_files(root):
        share = hash_percentage(wav.name)
        if (share < 10) == (split == "valid") and not 10 <= share < 20:
            items.append(_clip(folder, label, wav))
    if not items:
        raise UserError(f"{root}: no {split} utterances found")
    noise = sorted((root / NOISE).glob("*.wav"))
    if not noise:
        raise UserError(f"{root / NOISE}: no background noise .wav files for _silence_")
    silence = [Utterance(id=f"{NOISE}/{p.name}", path=p, label=SILENCE) for p in noise]
    if split == "valid":  # evaluated in one pass: a fixed crop per file
        silence = [replace(u, crop=(SEGMENT, i)) for i, u in enumerate(silence)]
    return items + silence


def _read_list(path: Path) -> set[str]:
    if not path.is_file():
        raise UserError(f"{path}: missing (Speech Commands needs validation_list.txt and "
                        "testing_list.txt)")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _release_candidates(root: Path) -> tuple[Path, ...]:
    return (root / "test", root / "speech_commands_test_set_v0.01",
            root.parent / "speech_commands_test_set_v0.01")


def _test_release(root: Path) -> Path | None:
    for candidate in _release_candidates(root):
        if (candidate / SILENCE).is_dir() or (candidate / UNKNOWN).is_dir():
            return candidate
    return None


def _load_class_folders(folder: Path) -> list[Utterance]:
    items = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if class_dir.name not in CLASSES:
            raise UserError(f"{class_dir}: unknown class folder in the test release (expected "
                            f"one of {', '.join(CLASSES)})")
        for wav in sorted(class_dir.glob("*.wav")):
            items.append(Utterance(id=f"test/{class_dir.name}/{wav.name}", path=wav,
                                   speaker=wav.name.split("_")[0], label=class_dir.name))
    if not items:
        raise UserError(f"{folder}: the test release holds no .wav files")
    return items


def silence_segments(root: Path, split: str, count: int) -> list[Utterance]:
    """`count` 1 s `_silence_` segments from the background noise files; each split takes
    its own third of every file, so no segment is shared between splits."""
    noise_files = sorted((root / NOISE).glob("*.wav"))
    if not noise_files:
        raise UserError(f"{root / NOISE}: no background noise .wav files for _silence_")
    part = SPLITS.index(split)
    slots = []
    for path in noise_files:
        frames, rate, _ = audio_info(path)
        length = frames * 16000 // rate
        third = length // 3
        start, stop = part * third, (part + 1) * third - SEGMENT
        slots += [(path, offset) for offset in range(start, max(stop, start) + 1, SEGMENT // 2)]
    if not slots:
        raise UserError(f"{root / NOISE}: the noise files are too short to cut 1 s segments")
    step = max(1, len(slots) // count)
    chosen = slots[::step][:count]
    return [Utterance(id=f"{NOISE}/{path.stem}@{offset}", path=path, label=SILENCE,
                      offset=offset, num_samples=SEGMENT) for path, offset in chosen]
