"""The embedded corpus and the loaders of the real layouts."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from tera.cli import main
from tera.corpora import librispeech, read_segment, speech_commands, voxceleb1
from tera.corpora.check import check_corpus
from tera.corpora.lexicon import word_phones
from tera.corpora.synthetic import synthesize
from tera.errors import UserError

from .corpus_signal import measure
from .paths import FLAC

# --- the embedded corpus, read through the real loaders ---------------------------------


def test_small_corpus_librispeech_part(small_corpus):
    root = small_corpus / "librispeech"
    splits = {s: librispeech.load_split(root, s, with_phones=True)
              for s in ("train", "dev", "test")}
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [30, 6, 6]
    speakers = {s: {u.speaker for u in utts} for s, utts in splits.items()}
    assert not speakers["train"] & speakers["test"]
    for utt in splits["train"][:5]:
        assert utt.text and utt.text == utt.text.upper() and utt.phones
        assert "'" not in "".join(utt.phones)
        wave = read_segment(utt)
        assert wave.dtype.is_floating_point and 16000 < len(wave) < 16000 * 12
    assert len(librispeech.phone_inventory(splits["train"])) > 20


def test_small_corpus_speech_commands_part(small_corpus):
    root = small_corpus / "speech_commands"
    for split in ("train", "valid", "test"):
        items = speech_commands.load_split(root, split)
        assert {u.label for u in items} == set(speech_commands.CLASSES), split
        silence = [u for u in items if u.label == "_silence_"]
        assert len(read_segment(silence[0])) == 16000
    train = {u.id for u in speech_commands.load_split(root, "train")}
    test = {u.id for u in speech_commands.load_split(root, "test")}
    assert not train & test


def test_small_corpus_voxceleb_part(small_corpus):
    root = small_corpus / "voxceleb1"
    splits = {s: voxceleb1.load_identification(root, s) for s in ("train", "dev", "test")}
    assert {u.label for u in splits["train"]} == {u.label for u in splits["test"]}
    trials = voxceleb1.load_trials(root)
    assert {label for label, _, _ in trials} == {0, 1}
    trial_speakers = {u.speaker for _, a, b in trials for u in (a, b)}
    dev_speakers = {u.speaker for _, a, b in voxceleb1.load_trials(root, "veri_dev.txt")
                    for u in (a, b)}
    training = {u.speaker for u in voxceleb1.load_verification_train(root)}
    assert not trial_speakers & training and not dev_speakers & training
    assert not trial_speakers & dev_speakers
    # identification is tested on sessions (videos) that training never saw
    session = {s: {u.id.rsplit("/", 1)[0] for u in utts} for s, utts in splits.items()}
    assert session["test"] and not session["test"] & (session["train"] | session["dev"])
    assert not session["dev"] & session["train"]
    # every target trial pairs two sessions of one speaker; non-targets two speakers
    for label, enrol, test in trials:
        assert (enrol.speaker == test.speaker) == bool(label)
        assert enrol.id.rsplit("/", 1)[0] != test.id.rsplit("/", 1)[0]


def test_channels_belong_to_sessions_and_voices_to_speakers(tmp_path):
    from tera.corpora.synthetic import PRESETS, speech_commands_jobs, voxceleb_jobs

    jobs, _ = voxceleb_jobs(tmp_path, PRESETS["small"], seed=0)
    channels, speakers = {}, {}
    for job in jobs:
        speaker, session = job.path.parts[-3:-1]
        channels.setdefault((speaker, session), set()).add(job.channel)
        speakers.setdefault(speaker, set()).add(job.speaker)
    assert all(len(c) == 1 for c in channels.values())  # one channel per session
    assert all(len(s) == 1 for s in speakers.values())  # one voice per speaker
    per_speaker = {}
    for (speaker, _), (channel,) in channels.items():
        per_speaker.setdefault(speaker, []).append(channel)
    assert all(len(set(c)) == len(c) > 1 for c in per_speaker.values())  # sessions differ
    clips, _ = speech_commands_jobs(tmp_path, PRESETS["small"], seed=0)
    assert len({job.channel for job in clips}) == len(clips)  # a recording per clip


def test_corpus_summary_and_check(small_corpus, capsys):
    summary = json.loads((small_corpus / "summary.json").read_text())
    assert summary["preset"] == "small" and summary["hours"]["total"] > 0.05
    report = check_corpus(small_corpus)
    assert report.problems == []
    assert main(["corpus", "check", str(small_corpus)]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_generation_is_deterministic_and_idempotent(small_corpus, tmp_path):
    again = tmp_path / "again"
    synthesize(again, "small", seed=0, progress=False)
    for rel in ("librispeech/train/100/1100/100-1100-0000.flac", "voxceleb1/veri_test2.txt",
                "librispeech/train/100/1100/100-1100.phones.txt"):
        assert _digest(again / rel) == _digest(small_corpus / rel), rel
    stamp = (again / "summary.json").stat().st_mtime
    synthesize(again, "small", seed=0, progress=False)  # already there: nothing redone
    assert (again / "summary.json").stat().st_mtime == stamp
    with pytest.raises(UserError, match="seed 0"):
        synthesize(again, "small", seed=1, progress=False)


def test_a_corpus_of_an_older_generator_is_made_again_or_refused(small_corpus, tmp_path):
    from tera.corpora.base import GENERATOR_VERSION, check_generator
    from tera.downstream.runner import resolve_data_root

    old = tmp_path / "old"
    shutil.copytree(small_corpus, old)
    summary = json.loads((old / "summary.json").read_text())
    assert summary["generator"] == GENERATOR_VERSION
    del summary["generator"]  # as generator 1 wrote it
    (old / "summary.json").write_text(json.dumps(summary))
    (old / "voxceleb1" / "veri_test2.txt").write_text("stale\n")
    with pytest.raises(UserError, match="corpus generator 1; .* `tera corpus synth"):
        check_generator(old)
    with pytest.raises(UserError, match="corpus generator 1"):
        resolve_data_root("asv", old)
    synthesize(old, "small", seed=0, progress=False)  # made again, not taken as it is
    check_generator(old)
    (old / "summary.json").write_text('{"preset": "small", ')  # torn
    with pytest.raises(UserError, match="summary.json: not valid JSON"):
        resolve_data_root("asv", old)
    assert _digest(old / "voxceleb1" / "veri_test2.txt") == \
        _digest(small_corpus / "voxceleb1" / "veri_test2.txt")


def test_synth_never_deletes_what_it_did_not_write(small_corpus, tmp_path, monkeypatch):
    """An empty folder is filled; a user's folder (even one named like the old scratch
    folder, `out.partial`) is kept; only scratch folders it marked as its own go."""
    from tera.corpora.synthetic import PARTIAL_MARKER

    out = tmp_path / "out"
    out.mkdir()
    users = tmp_path / "out.partial"
    users.mkdir()
    (users / "keep.txt").write_text("mine")
    stale = tmp_path / ".out.partial-killed"  # what a killed run leaves
    stale.mkdir()
    (stale / PARTIAL_MARKER).touch()
    synthesize(out, "small", seed=0, progress=False)
    assert _digest(out / "voxceleb1" / "veri_test2.txt") == \
        _digest(small_corpus / "voxceleb1" / "veri_test2.txt")
    assert (users / "keep.txt").read_text() == "mine" and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.partial"]
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "keep.txt").write_text("mine")
    monkeypatch.chdir(tmp_path / "theirs")
    for target in (tmp_path / "theirs", ".", "..", tmp_path):
        with pytest.raises(UserError, match="working folder|not a tera-speech corpus"):
            synthesize(target, "small", seed=0, progress=False)
    assert (tmp_path / "theirs" / "keep.txt").read_text() == "mine"


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_corpus_carries_speaker_and_keyword_signal(small_corpus):
    figures = measure(small_corpus)
    assert figures["sid_accuracy"] > 1.5 * figures["sid_chance"]
    assert figures["ks_accuracy"] > 1.5 * figures["ks_chance"]
    # the voice carries over to sessions the classifier never heard
    assert figures["speaker_accuracy_new_sessions"] > 1.5 * figures["speaker_chance_sessions"]


# --- hand-built trees in the real layouts -------------------------------------------------


def test_hand_built_librispeech_tree(tmp_path):
    chapter = tmp_path / "dev-clean" / "6313" / "76958"
    chapter.mkdir(parents=True)
    shutil.copy(FLAC, chapter / "6313-76958-0021.flac")
    (chapter / "6313-76958.trans.txt").write_text(
        "6313-76958-0021 KEEP A GOING AN IF YOU'RE LUCKY YOU'LL RUN PLUMB INTO THEM XYZZY\n")
    (utt,) = librispeech.load_split(tmp_path, "dev-clean", with_phones=True)
    assert utt.speaker == "6313" and utt.text.startswith("KEEP A GOING")
    assert utt.phones[:4] == ("K", "IY1", "P", "AH0")  # KEEP A, with stress (as s3prl)
    assert len(read_segment(utt)) == 190800

    (chapter / "6313-76958-0022.flac").write_bytes((chapter / "6313-76958-0021.flac").read_bytes())
    with pytest.raises(UserError, match="6313-76958-0022.flac: no line"):
        librispeech.load_split(tmp_path, "dev-clean")
    (chapter / "6313-76958-0022.flac").unlink()
    (chapter / "6313-76958.trans.txt").write_text("6313-76958-0021 A\n6313-76958-0030 B\n")
    with pytest.raises(UserError, match="0030 has no audio"):
        librispeech.load_split(tmp_path, "dev-clean")


def test_out_of_lexicon_words_are_pronounced_not_spelled():
    phones, source = word_phones("QWXZ")
    assert source == "g2p" and phones
    assert phones != sum((word_phones(letter)[0] for letter in "qwxz"), [])


def _tone(path, seconds=1.0, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.1 * np.sin(2 * np.pi * 300 * t), rate)


def test_hand_built_speech_commands_tree(tmp_path):
    for rel in ("yes/aa_nohash_0.wav", "yes/bb_nohash_0.wav", "bird/aa_nohash_0.wav",
                "no/cc_nohash_0.wav", "_background_noise_/noise.wav"):
        _tone(tmp_path / rel, seconds=4.0 if "noise" in rel else 1.0)
    (tmp_path / "validation_list.txt").write_text("yes/bb_nohash_0.wav\n")
    (tmp_path / "testing_list.txt").write_text("no/cc_nohash_0.wav\n")
    train = speech_commands.load_split(tmp_path, "train")
    labels = {u.id: u.label for u in train}
    assert labels["yes/aa_nohash_0.wav"] == "yes" and labels["bird/aa_nohash_0.wav"] == "_unknown_"
    assert "no/cc_nohash_0.wav" not in labels
    assert [u.label for u in speech_commands.load_split(tmp_path, "test")][0] == "no"

    release = tmp_path / "test"
    _tone(release / "_silence_" / "s.wav")
    _tone(release / "left" / "x.wav")
    assert {u.label for u in speech_commands.load_split(tmp_path, "test")} == {"_silence_", "left"}
    _tone(release / "dinosaur" / "x.wav")
    with pytest.raises(UserError, match="dinosaur: unknown class folder"):
        speech_commands.load_split(tmp_path, "test")
    (tmp_path / "testing_list.txt").unlink()
    with pytest.raises(UserError, match="testing_list.txt: missing"):
        speech_commands.load_split(tmp_path, "train")


def test_hand_built_voxceleb_tree_and_check_problems(tmp_path):
    for rel in ("id10001/aaa/00001.wav", "id10001/aaa/00002.wav", "id10002/bbb/00001.wav",
                "id10270/ccc/00001.wav", "id10270/ccc/00002.wav"):
        _tone(tmp_path / "wav" / rel, seconds=2.0)
    (tmp_path / "iden_split.txt").write_text(
        "1 id10001/aaa/00001.wav\n3 id10001/aaa/00002.wav\n1 id10002/bbb/00001.wav\n")
    (tmp_path / "veri_test2.txt").write_text(
        "1 id10270/ccc/00001.wav id10270/ccc/00002.wav\n0 id10270/ccc/00001.wav "
        "id10001/aaa/00001.wav\n")
    assert [u.label for u in voxceleb1.load_identification(tmp_path, "test")] == ["id10001"]
    assert {u.speaker for u in voxceleb1.load_verification_train(tmp_path)} == {"id10002"}
    assert len(voxceleb1.load_trials(tmp_path)) == 2

    sf.write(tmp_path / "wav" / "id10002" / "bbb" / "00001.wav", np.zeros(0), 16000)
    _tone(tmp_path / "wav" / "id10001" / "aaa" / "00001.wav", rate=8000)
    report = check_corpus(tmp_path)
    problems = "\n".join(report.problems)
    assert "00001.wav: empty audio" in problems
    assert "sample rate 8000 Hz" in problems
    assert "1 trial speakers also appear" in "\n".join(report.lines)  # VoxCeleb1 style: a note
    (tmp_path / "veri_dev.txt").write_text("1 id10270/ccc/00001.wav id10270/ccc/00002.wav\n")
    assert "training split of iden_split.txt: id10001" in "\n".join(check_corpus(tmp_path).problems)


def test_corpus_check_lists_every_problem(small_corpus, tmp_path, capsys):
    """A malformed trial list, two bad lines of one transcript and a duplicate id: all
    listed, exit 1 (not the first one as an error, exit 2)."""
    import shutil

    root = tmp_path / "corpus"
    shutil.copytree(small_corpus, root)
    trans = sorted((root / "librispeech" / "train").glob("*/*/*.trans.txt"))[0]
    lines = trans.read_text().splitlines()
    first, second = lines[0].split()[0], lines[1].split()[0]
    trans.write_text("\n".join([first, second, *lines[2:], lines[2]]) + "\n")
    with open(root / "voxceleb1" / "veri_test2.txt", "a") as f:
        f.write("2 id99999/x.wav\n")
    assert main(["corpus", "check", str(root)]) == 1
    out = capsys.readouterr().out
    n = len(lines)
    assert f"{trans.name}:1: expected 'UTTERANCE-ID TEXT', got '{first}'" in out
    assert f"{trans.name}:2: expected 'UTTERANCE-ID TEXT', got '{second}'" in out
    assert f"{trans.name}:{n + 1}: utterance id {lines[2].split()[0]} appears twice" in out
    assert "veri_test2.txt:" in out and "got '2 id99999/x.wav'" in out
    assert "6 problem(s)" in out  # + the two audio files whose lines are gone


def test_speakers_of_different_splits_are_different_voices(tmp_path):
    from tera.corpora.synthetic import PRESETS, librispeech_jobs, voxceleb_jobs

    for make in (librispeech_jobs, voxceleb_jobs):
        jobs, _ = make(tmp_path, PRESETS["default"], seed=0)
        voices = {}
        for job in jobs:
            voices[job.speaker.name] = job.speaker
        traits = {(s.voice, s.pitch, s.pitch_range, s.speed, s.warp) for s in voices.values()}
        assert len(traits) == len(voices) > 40, make.__name__


def test_utterance_lengths_are_read_once_per_corpus(tmp_path, monkeypatch):
    """Batching asks for every utterance's length at every epoch: the headers are read once
    per process, and a later process (a resume, the next seed) reads only changed files."""
    from pathlib import Path

    from tera import audio
    from tera.corpora import Utterance, lengths

    monkeypatch.setenv("TERA_SPEECH_HOME", str(tmp_path / "home"))
    folder = tmp_path / "audio"
    folder.mkdir()
    for i in range(300):  # hard links: many files for the price of one
        (folder / f"u{i:03d}.flac").hardlink_to(FLAC)
    wave = sf.read(FLAC, dtype="float32")[0]
    sf.write(folder / "narrow.flac", wave[:8000], 8000)
    utts = [Utterance(f"u{i}", folder / f"u{i:03d}.flac") for i in range(300)]
    utts += [Utterance("n", folder / "narrow.flac"),
             Utterance("cut", folder / "u000.flac", offset=100, num_samples=1234)]
    reads = []
    real_info = audio.audio_info

    def counted_info(path):
        reads.append(Path(path).name)
        return real_info(path)

    monkeypatch.setattr(audio, "audio_info", counted_info)

    def epoch() -> list[int]:
        reads.clear()
        return lengths.utterance_samples(utts).tolist()

    def new_process() -> None:
        monkeypatch.setattr(lengths, "_samples", {})

    new_process()
    assert epoch() == [len(wave)] * 300 + [16000, 1234] and len(reads) == 301
    assert epoch() == [len(wave)] * 300 + [16000, 1234] and reads == []
    new_process()
    assert epoch() == [len(wave)] * 300 + [16000, 1234] and reads == []
    (folder / "u007.flac").unlink()
    sf.write(folder / "u007.flac", wave[:5000], 16000)
    new_process()
    assert epoch()[5:9] == [len(wave), len(wave), 5000, len(wave)] and reads == ["u007.flac"]
    (folder / "u008.flac").unlink()
    new_process()
    with pytest.raises(UserError, match="u008.flac: no such audio file"):
        epoch()
