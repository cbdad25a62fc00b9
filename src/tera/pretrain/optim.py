"""The optimiser and learning-rate schedule of the fairseq fork's recipe.

fairseq's Adam differs from `torch.optim.AdamW` in two ways that matter early in a run:

- eps is added to √v *before* the bias correction: the update is
  `lr · √(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + eps)`, so the effective eps is eps / √(1−β₂ᵗ)
  (7x the nominal one at step 1 with β₂ 0.98); torch adds eps to the corrected √v̂.
- a parameter without a gradient in an update is still stepped, with a zero gradient, in the
  fork's setup (fp16 with flat fp32 gradients, `ddp_backend: no_c10d`): a layer skipped by
  LayerDrop keeps moving on its momentum and decays its weights, where torch leaves it
  untouched for that update.

Weight decay is decoupled in both (`p -= lr · wd · p`, before the Adam step).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

ADAM_VARIANTS = ("fairseq", "torch")


class FairseqAdam(torch.optim.Optimizer):
    """Adam with decoupled weight decay, eps placed as fairseq places it.

    `zero_fill` (default True) steps every trainable parameter, treating a missing
    gradient as zeros (the fork's LayerDrop behaviour, see the module docstring).
    State per parameter: `step` (int), `exp_avg`, `exp_avg_sq` (float32).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, zero_fill: bool = True) -> None:
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "zero_fill": zero_fill}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch's signature)
        loss = None if closure is None else closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None and not (group["zero_fill"] and param.requires_grad):
                    continue
                self._step_one(param, group)
        return loss

    def _step_one(self, param: torch.nn.Parameter, group: dict) -> None:
        weights = param  # float32: autocast keeps the parameters in float32
        grad = torch.zeros_like(weights) if param.grad is None else param.grad
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(weights)
            state["exp_avg_sq"] = torch.zeros_like(weights)
        beta1, beta2 = group["betas"]
        state["step"] = int(state["step"]) + 1  # an int (a tensor in torch's own Adam states)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denominator = exp_avg_sq.sqrt().add_(group["eps"])
        step_size = group["lr"] * math.sqrt(1 - beta2 ** state["step"]) \
            / (1 - beta1 ** state["step"])
        if group["weight_decay"] != 0:
            weights.add_(weights, alpha=-group["weight_decay"] * group["lr"])
        weights.addcdiv_(exp_avg, denominator, value=-step_size)


def build_optimizer(params: Iterable[torch.nn.Parameter], variant: str, lr: float,
                    betas: tuple[float, float], eps: float, weight_decay: float
                    ) -> torch.optim.Optimizer:
    """`optimizer.adam_variant`: "fairseq" (the fork's, above) or "torch" (`AdamW`)."""
    if variant == "fairseq":
        return FairseqAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if variant == "torch":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    raise ValueError(f"adam_variant must be one of {ADAM_VARIANTS}, got {variant!r}")


def polynomial_lr(update: int, peak: float, warmup: int, total: int, end: float = 0.0,
                  power: float = 1.0) -> float:
    """The learning rate of the update that follows `update` finished updates, numbered as
    fairseq's `polynomial_decay` is: linear from 0 (the first update's lr is 0) to `peak`
    at `warmup`, then polynomial decay to `end` at `total`."""
    if warmup > 0 and update <= warmup:
        return peak * update / warmup
    if update >= total:
        return end
    remaining = 1.0 - (update - warmup) / (total - warmup)
    return end + (peak - end) * remaining**power
