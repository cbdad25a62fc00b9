"""How much padding changes a transformers HubertModel export's hidden states.

    python benchmarks/transformers_padding.py [CKPT ...]   (default: the compat checkpoint)

Each checkpoint is exported with `tera convert --to transformers`, then the LibriSpeech file
(11.9 s) and its first 4 s (then 11 s) go through the model as one padded batch. The shorter
utterance's hidden states are compared with those it gets alone (no padding), for
transformers with the attention mask its feature extractor returns, transformers without a
mask (zero padding only, HF's advice for group-norm models), and tera-speech's own upstream.
transformers' first conv block normalises over the padded length (GroupNorm), tera-speech
over each utterance's own frames. Prints, per layer, the largest absolute difference and the
mean one relative to the mean absolute value of the states. Needs transformers (the dev extra).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from tera.audio import load_audio
from tera.checkpoint import convert_checkpoint, load_checkpoint
from tera.upstream import TeraUpstream

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
FLAC = DATA / "librispeech-6313-76958-0021.flac"
COMPAT = DATA / "compat" / "tera2_s3prl_converted.pt"
SHORT = (64000, 176000)  # samples of the padded utterance: 66 % and 8 % of the batch padding


def compare(alone: tuple, padded: tuple, frames: int) -> list[tuple[float, float]]:
    """Per layer: (max |difference|, mean |difference| / mean |state|) over the valid frames."""
    rows = []
    for a, b in zip(alone, padded):
        a, b = a[0, :frames], b[1, :frames]
        diff = (a - b).abs()
        rows.append((diff.max().item(), (diff.mean() / a.abs().mean()).item()))
    return rows


def measure(ckpt_path: Path, wave: torch.Tensor, samples: int) -> None:
    from transformers import AutoFeatureExtractor, HubertModel

    with tempfile.TemporaryDirectory() as folder:
        convert_checkpoint(ckpt_path, folder, "transformers")
        model = HubertModel.from_pretrained(folder).eval()
        extractor = AutoFeatureExtractor.from_pretrained(folder)
        short = wave[:samples]
        batch = extractor([wave.numpy(), short.numpy()], sampling_rate=16000, padding=True,
                          return_tensors="pt")
        alone_inputs = extractor(short.numpy(), sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            alone = model(**alone_inputs, output_hidden_states=True).hidden_states
            masked = model(**batch, output_hidden_states=True).hidden_states
            unmasked = model(batch["input_values"], output_hidden_states=True).hidden_states
            upstream = TeraUpstream(load_checkpoint(ckpt_path).model)
            ours_alone = upstream([short])["hidden_states"]
            ours_batch = upstream([wave, short])["hidden_states"]
    frames = alone[0].size(1)
    results = {"transformers, attention mask": compare(alone, masked, frames),
               "transformers, no mask": compare(alone, unmasked, frames),
               "tera-speech upstream": compare(ours_alone, ours_batch, frames)}
    print(f"{ckpt_path}: a {samples / 16000:.0f} s utterance padded to "
          f"{len(wave) / 16000:.1f} s; per layer h_0..h_L: max |diff| / mean relative diff")
    for name, rows in results.items():
        cells = "  ".join(f"{m:.2e}/{r:.1%}" for m, r in rows)
        print(f"  {name:30s} {cells}")


def main() -> int:
    paths = [Path(p) for p in sys.argv[1:]] or [COMPAT]
    wave = load_audio(FLAC)
    for path in paths:
        for samples in SHORT:
            measure(path, wave, samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
