"""Process-wide settings the compute commands (`tera pretrain`, `tera downstream`) run under.

They change how this whole process computes and allocates, not what a model is, so the
commands set them once at start (`prepare_process`); library code and model constructors
never do.
"""

from __future__ import annotations

import ctypes
import sys

import torch


def prepare_process() -> None:
    """Every setting below, for a process that trains or evaluates models."""
    flush_denormals()
    keep_freed_memory()


def flush_denormals() -> None:
    """Compute with denormal floats as zeros (CPU). Small activations and gradients of a
    training model drift into the denormal range, where CPU arithmetic is many times
    slower."""
    torch.set_flush_denormal(True)


def keep_freed_memory() -> None:
    """Let this process reuse the memory it frees (glibc, Linux): by default glibc maps
    every block above 32 MB afresh and unmaps it when freed, so a big activation's pages
    would be faulted in again at every step. With this, freed blocks stay in the heap and
    the process holds on to its peak memory."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl): leave it as it is
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 30)
