"""Manifests, datasets and samplers held as arrays: the same batches, crops and files as
plain-list versions of the same rules, and no Python object per file."""

from __future__ import annotations

import gc
import os
import random
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tera.audio import audio_info, load_audio
from tera.errors import UserError
from tera.pretrain import manifest as manifest_module
from tera.pretrain.data import (
    CroppedAudio,
    LengthBatchSampler,
    SamplerState,
    size_ordered,
    token_batches,
)
from tera.pretrain.file_check import listing_key
from tera.pretrain.manifest import PathList, audio_files, read_manifest, write_manifest
from tests.paths import FLAC

# --- plain-list references: the rules written the obvious way --------------------------------


def reference_token_batches(order, num_tokens, max_tokens, multiple=1) -> list[list[int]]:
    """fairseq's batch_by_size, one utterance at a time."""
    batches, start = [], 0
    while start < len(order):
        end, longest = start, 0
        while end < len(order) and (end - start + 1) * max(longest, num_tokens[order[end]]) \
                <= max_tokens:
            longest = max(longest, int(num_tokens[order[end]]))
            end += 1
        count = end - start
        if count >= multiple:
            count -= count % multiple
        batches.append([int(i) for i in order[start : start + count]])
        start += count
    if multiple > 1 and batches and len(batches[-1]) % multiple:
        batches.pop()
    return batches


def reference_epoch(batches, seed, epoch, rank=0, world_size=1) -> list[list[int]]:
    """An epoch's batches for a rank: a shuffled list of batch numbers."""
    order = list(range(len(batches)))
    np.random.RandomState(seed + epoch + 1).shuffle(order)
    per_rank = len(order) // world_size
    return [batches[i] for i in order[rank::world_size][:per_rank]]


def reference_read(path: Path) -> tuple[Path, list[tuple[str, int]]]:
    """A manifest read line by line."""
    lines = path.read_text().splitlines()
    entries = []
    for line in lines[1:]:
        if line.strip():
            parts = line.split("\t")
            entries.append((parts[0], int(parts[1])))
    return Path(lines[0].strip()), entries


def reference_write(root: Path, out: Path, valid_percent: float, seed: int) -> None:
    """`tera manifest` with every file listed first, then every header read."""
    files = sorted(p for ext in ("flac", "wav") for p in root.rglob(f"*.{ext}"))
    entries = []
    for path in files:
        frames, rate, _ = audio_info(path)
        entries.append((path.resolve().relative_to(root).as_posix(), frames * 16000 // rate))
    rng = random.Random(seed)
    valid = {i for i in range(len(entries)) if rng.random() < valid_percent}
    out.mkdir(parents=True)
    for name, keep in (("train", lambda i: i not in valid), ("valid", lambda i: i in valid)):
        lines = [str(root)] + [f"{rel}\t{n}" for i, (rel, n) in enumerate(entries) if keep(i)]
        (out / f"{name}.tsv").write_text("\n".join(lines) + "\n")


def librispeech_like(count: int, seed: int) -> np.ndarray:
    seconds = np.clip(np.random.default_rng(seed).normal(12.3, 3.8, count), 1.3, 35.2)
    sizes = (seconds * 16000).astype(np.int64)
    sizes[: count // 10] = 96000  # a run of ties
    return sizes


# --- batches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("multiple", [1, 8])
@pytest.mark.parametrize("cap", [250000, 10**9])
def test_batches_equal_the_one_at_a_time_rule(multiple, cap):
    for seed in range(4):
        sizes = librispeech_like(2000 + 37 * seed, seed)
        tokens = np.minimum(sizes, cap)
        order = size_ordered(sizes, seed)
        for max_tokens in (600000, 1400000, 3000000):
            expected = reference_token_batches(order, tokens, max_tokens, multiple)
            assert list(token_batches(order, tokens, max_tokens, multiple)) == expected


def test_batches_of_few_or_zero_length_utterances():
    for sizes in ([5], [0, 0, 0], [7, 7, 7, 7, 7], [9, 3, 3, 1]):
        sizes = np.array(sizes)
        order = size_ordered(sizes, 0)
        for multiple in (1, 2, 3):
            assert list(token_batches(order, sizes, 9, multiple)) == \
                reference_token_batches(order, sizes, 9, multiple)
    with pytest.raises(ValueError, match="longest first"):
        token_batches(np.arange(3), np.array([1, 2, 3]), 9)


def test_the_sampler_hands_out_the_reference_epochs_and_resumes_mid_epoch():
    sizes = librispeech_like(3000, 1)
    tokens = np.minimum(sizes, 250000)
    batches = reference_token_batches(size_ordered(sizes, 7), tokens, 1400000, 8)
    for world_size in (1, 3):
        for rank in range(world_size):
            sampler = LengthBatchSampler(sizes, tokens, 1400000, 7, rank, world_size, multiple=8)
            for epoch in range(3):
                expected = reference_epoch(batches, 7, epoch, rank, world_size)
                sampler.state = SamplerState(epoch, 0)
                assert list(sampler) == expected and len(sampler) == len(expected)
                sampler.state = SamplerState(epoch, 5)  # a resume 5 batches in
                assert list(sampler) == expected[5:]


# --- manifests -------------------------------------------------------------------------------


def test_a_manifest_reads_as_line_by_line_across_blocks(tmp_path, monkeypatch):
    lines = ["/data/root ", "a/b.flac\t16000", "", "  ", "é/ü ñ.wav\t 42 \textra",
             "c.flac\t7\r", "\t5", *(f"s/{i:04d}.flac\t{i * 977}" for i in range(500))]
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(lines))  # no newline at the end
    expected = reference_read(path)
    for block in (7, 64, 1 << 22):  # lines cut across blocks, and one block
        monkeypatch.setattr(manifest_module, "READ_BLOCK", block)
        found = read_manifest(path)
        assert (found.root, list(found.items())) == expected
        assert found.sizes.dtype == np.int64 and found.files.blob.dtype == np.uint8


@pytest.mark.parametrize("line", ["a.flac 12", "a.flac\t", "a.flac\t1 2", "a.flac\t-3",
                                  "a.flac\t1e5", "a.flac\t" + "9" * 19])
def test_a_malformed_line_is_named_by_its_number(tmp_path, monkeypatch, line):
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(["/data", "ok.flac\t5", "", *["x.flac\t1"] * 30, line, "z\t1"]))
    monkeypatch.setattr(manifest_module, "READ_BLOCK", 16)
    with pytest.raises(UserError, match=rf"train\.tsv:34: expected .*{line[:6]}"):
        read_manifest(path)


def test_manifest_writes_what_listing_everything_first_wrote(tmp_path):
    root = tmp_path / "audio"
    wave = load_audio(FLAC).numpy()
    names = ["b/x.flac", "a-b.wav", "a/b/c.flac", "a/b.flac", "a.flac", "A/z.wav",
             "a/.hidden.flac", "a/skip.FLAC", "a/skip.mp3", "ä/ü.flac", "a b/c.wav"]
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / name, wave[: 4000 + 100 * i], 8000 if name.endswith("wav") else 16000,
                 format="WAV" if name.endswith("wav") else "FLAC")
    os.symlink(root / "a", root / "linked")  # rglob does not follow it; neither do we
    for seed in range(3):
        reference_write(root, tmp_path / f"ref{seed}", 0.3, seed)
        counts = write_manifest(root, tmp_path / f"new{seed}", 0.3, seed=seed)
        for split in ("train", "valid"):
            ours = (tmp_path / f"new{seed}" / f"{split}.tsv").read_text()
            assert ours == (tmp_path / f"ref{seed}" / f"{split}.tsv").read_text()
            assert counts[split] == len(ours.splitlines()) - 1
    listed = [p.relative_to(root).as_posix() for p in audio_files(root, ("flac", "wav"))]
    assert listed == [p.relative_to(root).as_posix()
                      for p in sorted([*root.rglob("*.flac"), *root.rglob("*.wav")])]


def test_a_failing_header_leaves_no_manifest(tmp_path):
    root = tmp_path / "audio"
    root.mkdir()
    sf.write(root / "a.flac", load_audio(FLAC).numpy()[:4000], 16000)
    (root / "b.flac").write_bytes(b"not audio")
    with pytest.raises(UserError, match="b.flac"):
        write_manifest(root, tmp_path / "out", 0.5)
    assert not list((tmp_path / "out").glob("*"))


# --- no Python object per file ---------------------------------------------------------------


def reachable(obj) -> int:
    """How many objects `obj` holds, following references but not into classes, modules
    and functions (which every instance shares)."""
    seen, todo = set(), [obj]
    while todo:
        item = todo.pop()
        if id(item) in seen or isinstance(item, (type, types.ModuleType, types.FunctionType)):
            continue
        seen.add(id(item))
        todo.extend(gc.get_referents(item))
    return len(seen)


def write_lines(path: Path, count: int) -> Path:
    path.write_text("\n".join(["/data", *(f"{i // 100:04d}/{i:07d}.flac\t{20000 + i % 977 * 300}"
                                          for i in range(count))]) + "\n")
    return path


def test_dataset_and_sampler_hold_no_object_per_file(tmp_path):
    held = {}
    for count in (200, 20_000):
        dataset = CroppedAudio(write_lines(tmp_path / f"{count}.tsv", count), 250000, 16000)
        sampler = LengthBatchSampler(dataset.sizes, dataset.num_tokens(), 1400000, 0)
        list(sampler)  # an epoch handed out
        assert len(dataset) == count and len(sampler.batches) > count / 40
        held[count] = (reachable(dataset), reachable(sampler))
    assert held[200] == held[20_000]


def test_a_path_list_is_a_sequence_of_strings():
    names = ["a/b.flac", "é.wav", "", "x/y/z.flac"]
    paths = PathList.from_strings(names)
    assert list(paths) == names and paths[-1] == names[-1] and paths[1:3] == names[1:3]
    assert list(paths.select(np.array([True, False, True, True]))) == [names[0], *names[2:]]
    assert paths[-4] == names[0] and paths[::2] == names[::2] and paths[3:1] == []
    for outside in (4, -5):
        with pytest.raises(IndexError):
            paths[outside]
    # the check's record is keyed by the listing: the same key as from a list of strings
    assert listing_key(Path("/data"), paths) == listing_key(Path("/data"), names)
