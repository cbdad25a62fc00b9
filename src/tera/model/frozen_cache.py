"""Tensors derived from a module's weights (a cast, fused or re-laid-out weight), made once
and reused while the weights do not change: inference would otherwise remake them at
every call."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from tera.model.tensors import autocast_dtype

T = TypeVar("T")
# The reused tensors of each module, beside the module rather than in it, so that pickling,
# deepcopy and state dicts never carry them.
_REUSED: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def reuse_while_frozen(module: nn.Module, key: object, build: Callable[[], T]) -> T:
    """`build()`: tensors made from `module`'s parameters, kept beside the module while no
    gradient is recorded and reused until a parameter changes.

    A parameter has changed when its version counter moved (any in-place update: an
    optimizer step, `load_state_dict`) or its storage did (a move or a dtype conversion;
    the cache holds the old storage, so its address cannot be given to a new one
    meanwhile). `key` names what is built, with whatever else it depends on (the dtype).
    Under gradient recording, or for parameters made under `torch.inference_mode` (which
    have no version counter): `build()` each time.
    """
    if torch.is_grad_enabled():
        return build()
    params = list(module.parameters())
    if any(p.is_inference() for p in params):
        return build()
    cache = _REUSED.setdefault(module, {})
    if key in cache:
        sources, versions, value = cache[key]
        if len(sources) == len(params) and all(
            p.data_ptr() == s.data_ptr() and p._version == v and p.shape == s.shape
            and p.dtype == s.dtype for p, s, v in zip(params, sources, versions)
        ):
            return value
    value = build()
    cache[key] = ([p.detach() for p in params], [p._version for p in params], value)
    return value


class Linear(nn.Linear):
    """`nn.Linear` that, in inference under autocast, keeps its weight and bias in the
    autocast dtype (`reuse_while_frozen`) instead of having autocast cast them at every call.
    Same parameters and state-dict keys as `nn.Linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = autocast_dtype(x.device.type)
        if torch.is_grad_enabled() or dtype is None or self.weight.dtype == dtype:
            return super().forward(x)
        weight, bias = reuse_while_frozen(self, dtype, lambda: (
            self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype)))
        return F.linear(x.to(dtype), weight, bias)
