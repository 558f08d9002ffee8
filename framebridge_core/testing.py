"""Helpers for tests, stand-in weights and benchmarks; runtime code never imports this module."""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn as nn


def seeded_random_weights(module: nn.Module, seed: int = 0, prefix: str = "") -> nn.Module:
    """Fill every parameter with values drawn from a generator seeded by ``seed`` and the
    parameter's *name* (so two implementations with the same key layout get identical weights,
    in any construction order). Norm weights ~ 1 + 0.1·N, biases 0.1·N, the image gate ``alpha``
    0.5·N, Resampler queries N, other weights N·0.9/√fan_in."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            full = prefix + name
            g = torch.Generator().manual_seed((zlib.crc32(full.encode()) + 7919 * seed) % (2 ** 63))
            v = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if full.endswith("alpha"):
                v = v * 0.5
            elif p.ndim == 1 and full.endswith("weight"):
                v = 1.0 + 0.1 * v
            elif full.endswith("bias"):
                v = 0.1 * v
            elif full.endswith("latents"):
                pass
            else:
                v = v * (0.9 / math.sqrt(p[0].numel()))
            p.copy_(v.to(p.dtype))
    return module


__all__ = ["seeded_random_weights"]
