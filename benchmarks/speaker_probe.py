"""How much speaker information an upstream's layers hold, without training a head.

    python benchmarks/speaker_probe.py fbank
    python benchmarks/speaker_probe.py tera2 study/pretrain/size100_budget1/checkpoint_last.pt
    python benchmarks/speaker_probe.py tera2 study/random_init

Each utterance becomes the mean and standard deviation of a layer's frames; the dimensions
are standardised on the verification training set, an LDA is fitted on its speakers, and
the test trials are scored by cosine. Prints the test EER (%) per layer and for all layers
concatenated, with and without the LDA. It separates "the features lack speaker
information" from "the ASV head does not learn to use it" (README, Study).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from tera.corpora import Utterance, read_segment, voxceleb1
from tera.corpora.base import default_corpus_dir
from tera.downstream.asv import AsvTask
from tera.upstream import Upstream, load_upstream


@torch.no_grad()
def pooled_states(upstream: Upstream, utts: list[Utterance], batch: int = 16) -> np.ndarray:
    """[utterances, layers, 2 * dim]: per-layer mean and std over each utterance's frames."""
    rows = []
    for start in range(0, len(utts), batch):
        out = upstream([read_segment(u) for u in utts[start:start + batch]])
        states = torch.stack(out["hidden_states"], 1).float()  # [B, L, T, D]
        for row, n in enumerate(out["lengths"].tolist()):
            frames = states[row, :, :n]
            rows.append(torch.cat([frames.mean(1), frames.std(1)], -1).numpy())
    return np.stack(rows)


def probe(upstream: Upstream, root: Path, trial_list: str = "veri_test2.txt") -> dict:
    task = AsvTask(root, {"datarc": {"trial_list": trial_list}})  # its trials and scoring
    train, test = voxceleb1.load_verification_train(root), task.examples("test")
    x_train, x_test = pooled_states(upstream, train), pooled_states(upstream, test)
    speakers = [u.speaker for u in train]

    def eer(embeddings: np.ndarray) -> float:
        unit = torch.nn.functional.normalize(torch.from_numpy(embeddings).double(), dim=1)
        return round(100 * task.score(test, list(unit), "test")[0], 2)

    views = {f"layer {i}": (x_train[:, i], x_test[:, i]) for i in range(x_train.shape[1])}
    views["all layers"] = (x_train.reshape(len(train), -1), x_test.reshape(len(test), -1))
    result = {}
    for name, (a, b) in views.items():
        mean, std = a.mean(0), a.std(0) + 1e-5
        a, b = (a - mean) / std, (b - mean) / std
        lda = LinearDiscriminantAnalysis(n_components=min(30, len(set(speakers)) - 1),
                                         solver="eigen", shrinkage="auto").fit(a, speakers)
        result[name] = {"cosine_eer": eer(b), "lda_cosine_eer": eer(lda.transform(b))}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("upstream", choices=["tera2", "fbank", "mfcc"])
    parser.add_argument("ckpt", nargs="?", help="TERA checkpoint (any format)")
    parser.add_argument("--root", type=Path, help="voxceleb1 folder (default: embedded)")
    args = parser.parse_args()
    root = args.root or default_corpus_dir("default") / "voxceleb1"
    result = probe(load_upstream(args.upstream, args.ckpt).eval(), root)
    print(json.dumps({"upstream": args.upstream, "ckpt": args.ckpt, "eer_percent": result}))


if __name__ == "__main__":
    main()
