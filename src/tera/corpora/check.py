"""`tera corpus check`: what a corpus folder holds and everything wrong with it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tera.audio import audio_info
from tera.corpora import librispeech, speech_commands, voxceleb1
from tera.corpora.base import Utterance
from tera.errors import UserError


@dataclass
class Report:
    """What `tera corpus check` prints: facts, one line each, and the problems found."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def detect_layouts(root: Path) -> dict[str, Path]:
    """{layout kind: folder} for the corpora found at `root` (or inside it)."""
    found = {}
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (folder / "validation_list.txt").is_file():
            found["speech_commands"] = folder
        elif (folder / "iden_split.txt").is_file() or (folder / "veri_test2.txt").is_file():
            found["voxceleb1"] = folder
        elif any(folder.glob("*/*/*/*.trans.txt")):
            found["librispeech"] = folder
    return found


def check_corpus(root: str | Path) -> Report:
    """Every corpus layout found at `root` (or one level inside it): its splits, hours,
    speakers and sample rates, and every problem (unreadable audio, bad lines, wrong rate or
    channels, trial speakers trained on), each listed once. Raises `UserError` only when
    `root` is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    report = Report()
    layouts = detect_layouts(root)
    if not layouts:
        report.problems.append(f"{root}: no LibriSpeech, Speech Commands or VoxCeleb1 layout "
                               "found")
    for kind, folder in layouts.items():
        report.lines.append(f"{kind}: {folder}")
        splits = _splits(kind, folder, report)
        for split, utterances in splits.items():
            _audio_facts(split, utterances, report)
        if kind == "voxceleb1":
            _speaker_overlap(folder, splits, report)
    report.problems = list(dict.fromkeys(report.problems))  # each problem once
    return report


def _splits(kind: str, folder: Path, report: Report) -> dict[str, list[Utterance]]:
    def voxceleb(split: str) -> list[Utterance]:
        if split in voxceleb1.SPLIT_CODES:
            return voxceleb1.load_identification(folder, split)
        return voxceleb1.load_verification_train(folder, problems=[])  # trial lists: below

    loaders = {
        "librispeech": lambda s: librispeech.load_split(folder, s, problems=report.problems),
        "speech_commands": lambda s: speech_commands.load_split(folder, s),
        "voxceleb1": voxceleb,
    }[kind]
    names = {
        "librispeech": sorted(p.name for p in folder.iterdir() if p.is_dir()),
        "speech_commands": list(speech_commands.SPLITS),
        "voxceleb1": [*voxceleb1.SPLIT_CODES, "verification-train"],
    }[kind]
    splits = {}
    for split in names:
        try:
            splits[split] = loaders(split)
        except UserError as err:
            report.problems.append(str(err))
    if kind == "voxceleb1":
        for name in voxceleb1.TRIAL_LISTS:
            if (folder / name).is_file():
                trials = voxceleb1.load_trials(folder, name, report.problems)
                labels = Counter(label for label, _, _ in trials)
                report.lines.append(f"  {name}: {len(trials)} trials "
                                    f"({labels[1]} target, {labels[0]} non-target)")
    return splits


def _audio_facts(split: str, utterances: list[Utterance], report: Report) -> None:
    seconds, rates, labels = 0.0, Counter(), Counter(u.label for u in utterances if u.label)
    for utt in {u.path: u for u in utterances}.values():
        try:
            frames, rate, channels = audio_info(utt.path)
        except UserError as err:
            report.problems.append(str(err))
            continue
        rates[rate] += 1
        if frames == 0:
            report.problems.append(f"{utt.path}: empty audio (0 samples)")
        if rate != 16000:
            report.problems.append(f"{utt.path}: sample rate {rate} Hz, expected 16000")
        if channels != 1:
            report.problems.append(f"{utt.path}: {channels} channels, expected mono")
        seconds += frames / max(rate, 1)
    speakers = len({u.speaker for u in utterances if u.speaker})
    rate_text = ", ".join(f"{r} Hz x{n}" for r, n in sorted(rates.items()))
    report.lines.append(f"  {split}: {len(utterances)} utterances, {speakers} speakers, "
                        f"{seconds / 3600:.3f} h, {rate_text or 'no audio'}"
                        + (f", {len(labels)} classes" if len(labels) <= 20 and labels else ""))


def _speaker_overlap(folder: Path, splits: dict[str, list[Utterance]], report: Report) -> None:
    """Trial speakers must not be trained on. Real VoxCeleb1 lists every speaker in
    iden_split.txt (ASV training then excludes the trial speakers: a note); a corpus with
    its own dev trials (`veri_dev.txt`, as the embedded one) promises disjoint speakers, so
    there an overlap is a problem."""
    trial = voxceleb1.trial_speakers(folder, problems=[])  # its problems are reported
    identification = {u.speaker for u in splits.get("train", [])}
    overlap = sorted(trial & identification)
    if not overlap:
        return
    if (folder / "veri_dev.txt").is_file():
        report.problems.append(f"{folder}: speakers both in the trial lists and in the "
                               f"training split of iden_split.txt: {', '.join(overlap[:5])}")
    else:
        report.lines.append(f"  note: {len(overlap)} trial speakers also appear in "
                            "iden_split.txt (as in VoxCeleb1; ASV training excludes them)")
