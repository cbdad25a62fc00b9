"""The LibriSpeech tasks' real-data recipes (ASR, PR) against s3prl's: head sizes, targets,
SpecAugment, batches in utterances, and short runs on a corpus in LibriSpeech's layout."""

from __future__ import annotations

import json

import editdistance
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from tera.corpora import Utterance, librispeech
from tera.corpora.g2p import predict
from tera.corpora.lexicon import word_phones
from tera.corpora.phones import PHONEMES
from tera.downstream.asr import AsrTask
from tera.downstream.buckets import utterance_batches
from tera.downstream.pr import PrTask
from tera.downstream.recipe import load_recipe
from tera.downstream.runner import run
from tera.downstream.specaugment import SpecAugment, time_warp
from tera.errors import UserError

from .paths import FLAC

# (split, speaker, chapter, transcripts): ZORBLAXIAN is in no lexicon; SPEECH is given an
# unusual stress by the corpus's lexicon file, which must win over CMUdict.
CORPUS = {
    "train-clean-100": [("19", "198", ["SPEECH IS SILVER", "ZORBLAXIAN SPEECH", "THE RIVER"]),
                        ("26", "495", ["A QUIET RIVER", "SILVER SPEECH", "THE QUIET ONE"])],
    "dev-clean": [("84", "121", ["THE SILVER RIVER", "QUIET SPEECH"])],
    "test-clean": [("61", "704", ["SPEECH IS QUIET", "THE RIVER ONE"])],
}
LEXICON = "SPEECH\tS P IY2 CH\nSPEECH\tS P IY1 CH\nRIVER\tR IH1 V ER0\n"


@pytest.fixture(scope="module")
def libri_root(tmp_path_factory):
    """ROOT/<split>/<speaker>/<chapter>/*.flac + trans.txt, cut from the test recording, with
    the lexicon in ROOT's parent (where openslr's archives put it)."""
    parent = tmp_path_factory.mktemp("librispeech")
    root = parent / "LibriSpeech"
    wave, rate = sf.read(FLAC, dtype="float32")
    piece = 0
    for split, chapters in CORPUS.items():
        for speaker, chapter, texts in chapters:
            folder = root / split / speaker / chapter
            folder.mkdir(parents=True)
            lines = []
            for n, text in enumerate(texts):
                utt_id = f"{speaker}-{chapter}-{n:04d}"
                start = (piece % 7) * rate
                seconds = 1.0 + 0.25 * (piece % 3)
                sf.write(folder / f"{utt_id}.flac", wave[start : start + int(seconds * rate)],
                         rate)
                lines.append(f"{utt_id} {text}")
                piece += 1
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    (parent / "librispeech-lexicon.txt").write_text(LEXICON)
    return root


def task(kind, root, overrides=()):
    cfg = load_recipe(kind, None, None, list(overrides))
    made = {"asr": AsrTask, "pr": PrTask}[kind](root, OmegaConf.to_container(
        cfg.downstream_expert))
    made.prepare([])
    return made


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --- heads: s3prl's layer sizes for a 384-dim upstream ------------------------------------------


def linear(inputs: int, outputs: int) -> int:
    return inputs * outputs + outputs


def bilstm_layer(inputs: int, hidden: int) -> int:
    # per direction: 4 gates x (input and recurrent weights) + 2 bias vectors of 4 x hidden
    return 2 * (4 * hidden * (inputs + hidden) + 2 * 4 * hidden)


# s3prl's files end without a newline, so `wc -l` counts one line less than their loaders
# read: asr/char.dict has 28 symbols (fairseq's 4 specials first: 32 outputs), and
# ctc/vocab/phoneme.txt 71 tokens (after pad, eos and unk: 74 outputs).


def test_asr_head_is_s3prls_size(tmp_path):
    asr = task("asr", tmp_path)
    assert len(asr.labels) == 4 + 28 and asr.labels[:5] == ["<s>", "<pad>", "</s>", "<unk>", "|"]
    expected = (linear(384, 1024) + bilstm_layer(1024, 1024) + bilstm_layer(2048, 1024)
                + linear(2048, 32))
    assert trainable(asr.build_head(384)) == expected == 42_435_616


def test_pr_head_is_s3prls_size(tmp_path):
    pr = task("pr", tmp_path)
    assert len(PHONEMES) == 71 and PHONEMES[:3] == ("SIL", "SPN", "AA0")
    assert pr.labels[:3] == ["<pad>", "<eos>", "<unk>"] and len(pr.labels) == 74
    expected = linear(384, 256) + linear(256, 74)
    assert trainable(pr.build_head(384)) == expected == 117_578


def test_asr_dropout_follows_every_bilstm_layer_the_last_included(tmp_path):
    small = ["downstream_expert.modelrc.hidden_size=8", "downstream_expert.modelrc.project_dim=8",
             "downstream_expert.modelrc.dropout=0.5"]
    head = task("asr", tmp_path, small).build_head(6)
    reaching_output = []
    head.output.register_forward_hook(lambda _m, inputs, _o: reaching_output.append(inputs[0]))
    x, lengths = torch.randn(3, 50, 6), torch.tensor([50, 40, 30])
    torch.manual_seed(0)
    head(x, lengths)
    head.eval()
    head(x, lengths)
    dropped = (reaching_output[0] == 0).float().mean()
    assert 0.4 < dropped < 0.6 and not (reaching_output[1] == 0).any()
    # s3prl's per-layer flags: a layer norm and a tanh projection after each layer
    flagged = task("asr", tmp_path, [*small, "downstream_expert.modelrc.layer_norm=true",
                                     "downstream_expert.modelrc.proj=true"]).build_head(6)
    assert trainable(flagged) - trainable(head) == 2 * (2 * 16 + linear(16, 16))


def test_embedded_profiles_keep_their_own_heads(tmp_path):
    cfg = load_recipe("pr", None, "embedded", [])
    pr = PrTask(tmp_path, OmegaConf.to_container(cfg.downstream_expert))
    pr.labels = ["<blank>", "AA", "B"]
    assert trainable(pr.build_head(384)) == linear(384, 3)
    assert load_recipe("pr", None, "embedded", []).runner.gradient_accumulate_steps == 1
    cfg = load_recipe("asr", None, "embedded", [])
    asr = AsrTask(tmp_path, OmegaConf.to_container(cfg.downstream_expert))
    asr.labels = ["<blank>", " ", "A"]
    head = asr.build_head(384)
    assert head.specaugment is None and not head.dropout_after_each_layer
    assert asr.batches([32000] * 4, True, 0) is None and cfg.runner.batch_samples
    assert [asr.labels[i] for i in asr.targets("A A")] == ["A", " ", "A"]


# --- targets ---------------------------------------------------------------------------------


def test_asr_targets_are_char_dict_symbols_with_word_ends_and_end(tmp_path):
    asr = task("asr", tmp_path)
    symbols = [asr.labels[i] for i in asr.targets("SHE SAID")]
    assert symbols == ["S", "H", "E", "|", "S", "A", "I", "D", "|", "</s>"]
    assert asr.labels[asr.targets("É")[0]] == "<unk>"


def best_path(labels: list[str], path: list[str]):
    """A head whose log-probabilities put each frame on the symbol `path` names there."""
    frames = torch.full((1, len(path), len(labels)), -30.0)
    for t, symbol in enumerate(path):
        frames[0, t, labels.index(symbol)] = 0.0
    return lambda x, lengths: frames


def test_ctc_decoding_merges_repeats_drops_blanks_and_the_end_then_scores(tmp_path):
    asr = task("asr", tmp_path)
    path = ["<s>", "S", "S", "H", "E", "|", "|", "<s>", "S", "A", "<s>", "I", "D", "|",
            "</s>", "</s>", "<s>"]
    lengths = torch.tensor([len(path)])
    assert asr.predict(best_path(asr.labels, path), None, lengths) == [["SHE", "SAID"]]
    # only the valid frames count: the head's last frames are padding
    assert asr.predict(best_path(asr.labels, path), None, torch.tensor([6])) == [["SHE"]]
    utt = Utterance(id="u1", path=tmp_path, text="SHE SAYS")
    value, lines, items = asr.score([utt], [["SHE", "SAID"]], "test")
    assert value == 0.5 and lines == ["u1\tREF: SHE SAYS\tHYP: SHE SAID"]
    assert items.columns["errors"].tolist() == [1] and items.columns["length"].tolist() == [2]
    pr = task("pr", tmp_path)
    path = ["<pad>", "DH", "DH", "<pad>", "AH0", "<eos>"]
    assert pr.predict(best_path(pr.labels, path), None, torch.tensor([6])) == [["DH", "AH0"]]
    # a learned inventory: characters with the space between words
    asr.labels = ["<blank>", " ", "A", "B"]
    asr.cfg["datarc"]["vocabulary"] = "learned"
    path = ["A", " ", "<blank>", "B", "B", " ", " ", "A"]
    assert asr.predict(best_path(asr.labels, path), None, torch.tensor([8])) == [["A", "B", "A"]]


def test_pr_targets_are_stressed_tokens_from_the_lexicon_then_g2p(libri_root):
    train = librispeech.load_split(libri_root, "train-clean-100", with_phones=True)
    phones = {u.text: u.phones for u in train}
    # the corpus's lexicon wins (its first pronunciation), CMUdict next, then the model
    assert phones["SPEECH IS SILVER"] == ("S", "P", "IY2", "CH", "IH1", "Z", "S", "IH1", "L",
                                          "V", "ER0")
    oov = phones["ZORBLAXIAN SPEECH"][:-4]
    assert oov == tuple(predict("ZORBLAXIAN")) and word_phones("ZORBLAXIAN")[1] == "g2p"
    spelled = [p for letter in "zorblaxian" for p in word_phones(letter)[0]]
    assert len(oov) < len(spelled) and set(oov) <= set(PHONEMES)
    assert any(p[-1] in "012" for p in oov)
    pr = task("pr", libri_root)
    target = pr.targets(phones["THE RIVER"])
    assert [pr.labels[i] for i in target] == ["DH", "AH0", "R", "IH1", "V", "ER0", "<eos>"]


def test_pr_reads_the_lexicon_files_its_recipe_names(libri_root, tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("RIVER R IH2 V ER0\n")
    second.write_text("RIVER R IY1 V ER0\nQUIET K W AY1 AH0 T\n")
    pr = task("pr", libri_root, [f"downstream_expert.datarc.lexicon=[{first},{second}]"])
    phones = {u.text: u.phones for u in pr.examples("dev-clean")}
    assert phones["THE SILVER RIVER"][-4:] == ("R", "IH2", "V", "ER0")
    with pytest.raises(UserError, match="nowhere.txt: no such lexicon file"):
        task("pr", libri_root, ["downstream_expert.datarc.lexicon=[nowhere.txt]"]).examples(
            "dev-clean")


def test_the_g2p_model_gives_cmudict_pronunciations_back():
    # the model was trained on CMUdict: common words come back as the dictionary has them
    for word in ("speech", "recognition", "river", "quiet"):
        assert predict(word) == word_phones(word)[0], word


# --- SpecAugment -----------------------------------------------------------------------------


def test_specaugment_masks_bands_and_spans_in_training_only():
    torch.manual_seed(0)
    augment = SpecAugment(time_warp_window=5, freq_masks=4, freq_mask_widths=(0, 50),
                          time_masks=2, time_mask_widths=(0, 40))
    x = torch.rand(2, 200, 80) + 1.0
    lengths = torch.tensor([200, 150])
    out = augment(x, lengths)
    assert out.shape == x.shape
    zero_bands = (out[0] == 0).all(dim=0).sum()
    zero_frames = (out[0] == 0).all(dim=1).sum()
    assert 0 < zero_bands < 4 * 50 and 0 < zero_frames < 2 * 40
    assert (out[1, 150:] == 0).all()  # padding comes back as zeros
    augment.eval()
    assert torch.equal(augment(x, lengths), x)


def test_time_warp_keeps_the_length_and_short_utterances():
    torch.manual_seed(0)
    ramp = torch.arange(100.0)[:, None].expand(100, 3)
    warped = time_warp(ramp, 5)
    assert warped.shape == ramp.shape and not torch.equal(warped, ramp)
    assert (warped[1:] >= warped[:-1] - 1e-4).all()  # still a rising ramp
    assert torch.equal(time_warp(ramp[:10], 5), ramp[:10])


def test_asr_run_augments_training_batches_not_evaluation(libri_root, tmp_path, monkeypatch):
    seen = []
    forward = SpecAugment.forward

    def spy(self, x, lengths):
        out = forward(self, x, lengths)
        seen.append((self.training, not torch.equal(out, x), x.size(0)))
        return out

    monkeypatch.setattr(SpecAugment, "forward", spy)
    results = run("asr", upstream="fbank", expdir=tmp_path, data_root=libri_root, overrides=[
        "runner.total_steps=3", "runner.eval_step=3", "runner.save_step=3",
        "runner.log_step=3", "downstream_expert.modelrc.hidden_size=16",
        "downstream_expert.modelrc.project_dim=16", "downstream_expert.datarc.batch_size=4"])
    assert {changed for training, changed, _ in seen if training} == {True}
    assert {changed for training, changed, _ in seen if not training} == {False}
    # buckets of 4 utterances, halved: every utterance is longer than 2000 samples
    assert {size for training, _, size in seen if training} == {2}
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["value"] == results["value"] and written["split"] == "test-clean"
    assert (tmp_path / "dev-clean-best.ckpt").is_file()
    lines = (tmp_path / "test-clean_predictions.txt").read_text().splitlines()
    assert len(lines) == 2 and all("|" not in line and "</s>" not in line for line in lines)


def test_pr_run_on_the_real_layout(libri_root, tmp_path):
    results = run("pr", upstream="fbank", expdir=tmp_path, data_root=libri_root, overrides=[
        "runner.total_steps=2", "runner.eval_step=2", "runner.save_step=2",
        "runner.log_step=2"])
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["value"] == results["value"] and written["task"] == "pr"
    lines = (tmp_path / "test-clean_predictions.txt").read_text().splitlines()
    references = [line.split("REF:")[1].split("\tHYP:")[0].split() for line in lines]
    hypotheses = [line.split("HYP:")[1].split() for line in lines]
    assert all(set(h) <= set(PHONEMES) | {"<unk>"} for h in hypotheses)
    # the number is the phone error rate of the predictions written
    errors = sum(editdistance.eval(r, h) for r, h in zip(references, hypotheses))
    assert written["value"] == pytest.approx(errors / sum(len(r) for r in references))


# --- batches in utterances ---------------------------------------------------------------------


def test_consecutive_buckets_halve_long_batches_and_drop_a_single_remainder():
    sizes = [1000 + i for i in range(70)]  # longest first: 69, 68, ...
    datarc = {"batch_size": 32, "half_batch_above": 1050, "bucketing": "consecutive"}
    batches = utterance_batches(sizes, datarc, shuffle=False, seed=0)
    assert [len(b) for b in batches] == [16, 16, 32, 6]
    assert batches[0] == list(range(69, 53, -1)) and batches[3] == list(range(5, -1, -1))
    assert [len(b) for b in utterance_batches(sizes[:65], datarc, False, 0)] == [16, 16, 32]
    shuffled = utterance_batches(sizes, datarc, shuffle=True, seed=1)
    assert sorted(map(tuple, shuffled)) == sorted(map(tuple, batches))
    assert utterance_batches(sizes, {}, True, 0) is None


def test_sliding_windows_one_per_utterance_clamped_and_halved():
    sizes = [100 * (i + 1) for i in range(20)]
    datarc = {"batch_size": 16, "half_batch_above": 1900, "bucketing": "sliding"}
    windows = utterance_batches(sizes, datarc, shuffle=False, seed=0)
    assert len(windows) == 20
    assert windows[0] == list(range(19, 11, -1))  # first is 2000 samples: cut to 8
    assert windows[1] == list(range(18, 2, -1))
    assert windows[4] == windows[19] == list(range(15, -1, -1))  # clamped to a full window
