"""Speech Commands v1 in SUPERB's 12-class setup: the 10 words below, every other word as
`_unknown_`, and `_silence_` as 1 s cuts of the `_background_noise_` recordings.

Layout: ROOT/<word>/<hash>_nohash_<n>.wav, ROOT/validation_list.txt and testing_list.txt
(paths relative to ROOT), ROOT/_background_noise_/*.wav. The test split is SUPERB's: the
separate test-set release (a folder per class, `_silence_` and `_unknown_` included), found
as ROOT/test/, ROOT/speech_commands_test_set_v0.01/ or ROOT/../speech_commands_test_set_v0.01;
without one, the files of testing_list.txt are used (the classic split).
"""

from __future__ import annotations

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


def load_split(root: str | Path, split: str) -> list[Utterance]:
    """The utterances of "train", "valid" or "test", each labelled with one of CLASSES."""
    root = Path(root)
    if split not in SPLITS:
        raise UserError(f"unknown Speech Commands split {split!r}; expected one of {SPLITS}")
    if not root.is_dir():
        raise UserError(f"{root}: no such Speech Commands folder")
    if split == "test":
        test_root = _test_release(root)
        if test_root is not None:
            return _load_class_folders(test_root)
    listed = {name: _read_list(root / f"{name}_list.txt") for name in ("validation", "testing")}
    wanted = {"valid": listed["validation"], "test": listed["testing"]}.get(split)
    held_out = listed["validation"] | listed["testing"]
    items = []
    for word_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if word_dir.name in (NOISE, "test") or word_dir.name.startswith("speech_commands_test"):
            continue
        label = word_dir.name if word_dir.name in WORDS else UNKNOWN
        for wav in sorted(word_dir.glob("*.wav")):
            rel = f"{word_dir.name}/{wav.name}"
            if (wanted is not None and rel in wanted) or (wanted is None and rel not in held_out):
                items.append(Utterance(id=rel, path=wav, speaker=wav.name.split("_")[0],
                                       label=label))
    if not items:
        raise UserError(f"{root}: no {split} utterances found")
    return items + silence_segments(root, split, count=max(1, len(items) // 11))


def _read_list(path: Path) -> set[str]:
    if not path.is_file():
        raise UserError(f"{path}: missing (Speech Commands needs validation_list.txt and "
                        "testing_list.txt)")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _test_release(root: Path) -> Path | None:
    for candidate in (root / "test", root / "speech_commands_test_set_v0.01",
                      root.parent / "speech_commands_test_set_v0.01"):
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
