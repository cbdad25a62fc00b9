"""VoxCeleb1 layout: ROOT/wav/<id1xxxx>/<youtube-id>/<nnnnn>.wav, `iden_split.txt`
("1|2|3 path" for train / dev / test identification) and verification trial lists
(`veri_test.txt`, the original list SUPERB scores, and `veri_test2.txt`, the cleaned one:
"label enrolment test"). The embedded corpus writes `veri_test2.txt` and `veri_dev.txt`,
held-out trials for choosing the ASV checkpoint.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from tera.corpora.base import Utterance, problem
from tera.errors import UserError

SPLIT_CODES = {"train": "1", "dev": "2", "test": "3"}
TRIAL_LISTS = ("veri_test2.txt", "veri_test.txt", "veri_dev.txt")


def _utterance(root: Path, rel: str, source: Path) -> Utterance:
    path = root / "wav" / rel
    if not path.is_file():
        raise UserError(f"{source}: lists {rel}, but {path} does not exist")
    return Utterance(id=rel, path=path, speaker=rel.split("/")[0], label=rel.split("/")[0])


def load_identification(root: str | Path, split: str) -> list[Utterance]:
    """The utterances `iden_split.txt` puts in "train", "dev" or "test", labelled with their
    speaker; an unknown split, a missing list, a malformed line or a listed file that does not
    exist raises `UserError`."""
    root = Path(root)
    if split not in SPLIT_CODES:
        raise UserError(f"unknown identification split {split!r}; expected train, dev or test")
    listing = root / "iden_split.txt"
    if not listing.is_file():
        raise UserError(f"{listing}: missing (the VoxCeleb1 identification split)")
    items = []
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in SPLIT_CODES.values():
            raise UserError(f"{listing}:{number}: expected '1|2|3 id/video/file.wav'")
        if parts[0] == SPLIT_CODES[split]:
            items.append(_utterance(root, parts[1], listing))
    return items


def load_trials(root: str | Path, name: str = "veri_test2.txt",
                problems: list[str] | None = None) -> list[tuple[int, Utterance, Utterance]]:
    """The trials of a list; a malformed line or a missing file raises `UserError`, or
    with a `problems` list is added there (and skipped)."""
    root = Path(root)
    listing = root / name
    if not listing.is_file():
        raise UserError(f"{listing}: missing verification trial list")
    trials = []
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            problem(problems, f"{listing}:{number}: expected 'label enrolment.wav test.wav', "
                              f"got {line.strip()!r}")
            continue
        try:
            trials.append((int(parts[0]), _utterance(root, parts[1], listing),
                           _utterance(root, parts[2], listing)))
        except UserError as err:
            problem(problems, f"{err} (line {number})")
    return trials


def trial_speakers(root: Path, problems: list[str] | None = None) -> set[str]:
    """The speakers of every trial list present at `root`; `problems`: as for
    `load_trials`."""
    speakers = set()
    for name in TRIAL_LISTS:
        if (root / name).is_file():
            for _, enrol, test in load_trials(root, name, problems):
                speakers |= {enrol.speaker, test.speaker}
    return speakers


def load_verification_train(root: str | Path, problems: list[str] | None = None
                            ) -> list[Utterance]:
    """Every utterance of a speaker that appears in no trial list (to train the ASV head);
    `problems`: as for `load_trials`."""
    root = Path(root)
    held_out = trial_speakers(root, problems)
    items = [
        Utterance(id=p.relative_to(root / "wav").as_posix(), path=p, speaker=p.parts[-3],
                  label=p.parts[-3])
        for p in sorted((root / "wav").glob("*/*/*.wav")) if p.parts[-3] not in held_out
    ]
    if not items:
        raise UserError(f"{root / 'wav'}: no utterances of speakers outside the trial lists")
    return items


def make_trials(utterances: list[Utterance], num_trials: int, seed: int = 0
                ) -> list[tuple[int, Utterance, Utterance]]:
    """Balanced target / non-target trials among `utterances` (e.g. held-out speakers)."""
    rng = random.Random(seed)
    by_speaker: dict[str, list[Utterance]] = {}
    for utt in utterances:
        by_speaker.setdefault(utt.speaker, []).append(utt)
    speakers = [s for s, u in by_speaker.items() if len(u) >= 2]
    if len(by_speaker) < 2 or not speakers:
        raise UserError("trials need two speakers, one of them with two utterances")
    trials = []
    for i in range(num_trials):
        if i % 2 == 0:
            enrol, test = rng.sample(by_speaker[rng.choice(speakers)], 2)
            trials.append((1, enrol, test))
        else:
            a, b = rng.sample(sorted(by_speaker), 2)
            trials.append((0, rng.choice(by_speaker[a]), rng.choice(by_speaker[b])))
    return trials


def with_effects(utt: Utterance, gain_db: float, trim_silence: bool) -> Utterance:
    """`utt` with s3prl's sox effects to apply when it is read (a gain, silence removal)."""
    return replace(utt, gain_db=gain_db, trim_silence=trim_silence)
