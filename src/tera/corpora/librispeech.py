"""LibriSpeech layout: ROOT/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac with one
`<speaker>-<chapter>.trans.txt` per chapter ("ID WORDS" lines, upper-case words).

Phone transcripts (for phoneme recognition) come from `<speaker>-<chapter>.phones.txt` when
the folder has one (the embedded corpus writes the phones its engine spoke), else from the
pronunciations of the words: stressed ARPAbet from the LibriSpeech lexicon beside the corpus,
CMUdict or a grapheme-to-phoneme model (see `tera.corpora.lexicon`).
"""

from __future__ import annotations

from pathlib import Path

from tera.corpora.base import Utterance, problem
from tera.corpora.lexicon import add_lexicon_phones, find_lexicon
from tera.errors import UserError

AUDIO_EXTENSIONS = (".flac", ".wav")


def load_split(root: str | Path, split: str, *, with_phones: bool = False,
               lexicons: list[Path] | None = None, problems: list[str] | None = None
               ) -> list[Utterance]:
    """Every utterance of `ROOT/split` with its transcript (and phones if asked: pronounced
    with `lexicons`, by default the LibriSpeech lexicon beside the corpus).

    A malformed line, a duplicate utterance id or a missing audio file raises `UserError`;
    with a `problems` list, each is added there instead and the rest is still read."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise UserError(f"{folder}: no such LibriSpeech split folder")
    transcripts = sorted(folder.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise UserError(f"{folder}: no <speaker>/<chapter>/*.trans.txt transcripts found")
    utterances, seen = [], {}
    for trans in transcripts:
        lines = _read_id_lines(trans, problems)
        phones = _read_id_lines(trans.with_name(trans.name.replace(".trans.txt", ".phones.txt")),
                                problems)
        for utt_id, words in lines.items():
            audio = _audio_file(trans.parent, utt_id)
            if audio is None:
                problem(problems, f"{trans}: transcript line {utt_id} has no audio file "
                                  f"{utt_id}.flac or .wav")
                continue
            if utt_id in seen:
                problem(problems, f"{trans}: utterance id {utt_id} is also in {seen[utt_id]}")
                continue
            seen[utt_id] = trans
            utterances.append(Utterance(
                id=utt_id, path=audio, speaker=utt_id.split("-")[0], text=words,
                phones=tuple(phones[utt_id].split()) if utt_id in phones else None,
            ))
        for audio in sorted(p for p in trans.parent.iterdir() if p.suffix in AUDIO_EXTENSIONS):
            if audio.stem not in lines:
                problem(problems, f"{audio}: no line for {audio.stem} in {trans.name}")
    if with_phones and any(u.phones is None for u in utterances):
        utterances = add_lexicon_phones(
            utterances, find_lexicon(root) if lexicons is None else lexicons)
    return utterances


def _read_id_lines(path: Path, problems: list[str] | None) -> dict[str, str]:
    if not path.is_file():
        return {}
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            problem(problems, f"{path}:{number}: expected 'UTTERANCE-ID TEXT', got {line!r}")
        elif parts[0] in entries:
            problem(problems, f"{path}:{number}: utterance id {parts[0]} appears twice")
        else:
            entries[parts[0]] = parts[1]
    return entries


def _audio_file(folder: Path, utt_id: str) -> Path | None:
    for ext in AUDIO_EXTENSIONS:
        if (folder / f"{utt_id}{ext}").is_file():
            return folder / f"{utt_id}{ext}"
    return None


def phone_inventory(utterances: list[Utterance]) -> list[str]:
    """The sorted set of phone tokens used by the utterances."""
    return sorted({p for u in utterances for p in (u.phones or ())})


def characters(utterances: list[Utterance]) -> list[str]:
    """The sorted character set of the transcripts (space included), for CTC over letters."""
    return sorted({c for u in utterances for c in (u.text or "")})
