"""The heads the embedded profile keeps (CPU-sized runs on the generated corpus), beside the
SUPERB heads of the real-data recipes; their parameter names are fixed, so that the
checkpoints already saved with them still load."""

from __future__ import annotations

import torch
from torch import nn

from tera.downstream.base import am_softmax, masked_mean


class PooledMlpHead(nn.Module):
    """Mean over valid frames -> `Linear(dim, hidden)` -> ReLU -> `Linear(hidden, classes)`."""

    def __init__(self, dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x, lengths):
        return self.mlp(masked_mean(x, lengths))


class PooledLinearHead(nn.Module):
    """Mean over valid frames -> `Linear(dim, classes)`."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.output = nn.Linear(dim, classes)

    def forward(self, x, lengths):
        return self.output(masked_mean(x, lengths))


class XVector(nn.Module):
    """A compact x-vector: padded TDNN convolutions (context 5/3/3/1/1 frames, dilations
    1/2/3/1/1) with ReLU and batch norm -> mean + std pooling over valid frames ->
    embedding; `classifier` holds the AM-softmax class vectors."""

    def __init__(self, dim: int, channels: int, embedding: int, classes: int,
                 margin: float, scale: float) -> None:
        super().__init__()
        layers = []
        shapes = [(dim, channels, 5, 1), (channels, channels, 3, 2), (channels, channels, 3, 3),
                  (channels, channels, 1, 1), (channels, 3 * channels, 1, 1)]
        for c_in, c_out, kernel, dilation in shapes:
            layers += [nn.Conv1d(c_in, c_out, kernel, dilation=dilation,
                                 padding=dilation * (kernel - 1) // 2),
                       nn.ReLU(), nn.BatchNorm1d(c_out)]
        self.tdnn = nn.Sequential(*layers)
        self.embed = nn.Linear(6 * channels, embedding)
        self.classifier = nn.Parameter(torch.randn(classes, embedding) * 0.01)
        self.margin, self.scale = margin, scale

    def embedding(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """`[batch, frame, dim]` and valid frames `[batch]` -> embeddings `[batch,
        embedding]`."""
        h = self.tdnn(x.transpose(1, 2))  # [B, C, T]
        valid = (torch.arange(h.size(2), device=h.device) < lengths.unsqueeze(1)).unsqueeze(1)
        count = lengths.clamp(min=1).view(-1, 1).to(h.dtype)
        mean = (h * valid).sum(2) / count
        var = (((h - mean.unsqueeze(2)) * valid) ** 2).sum(2) / count
        return self.embed(torch.cat([mean, var.clamp(min=1e-6).sqrt()], dim=1))

    def am_softmax_loss(self, x: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor
                        ) -> torch.Tensor:
        """AM-softmax over the training speakers (`labels`: their indices `[batch]`)."""
        cosine = (nn.functional.normalize(self.embedding(x, lengths))
                  @ nn.functional.normalize(self.classifier).T)
        return am_softmax(cosine, labels, self.margin, self.scale)
