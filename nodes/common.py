"""What every node module shares: ComfyUI's attention for our networks, weight precisions, dtype choice."""

from __future__ import annotations

import torch

import comfy.model_management as mm

#: the weight_dtype input of the loaders
WEIGHT_DTYPES = {"default": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def comfy_attention(q, k, v):
    """ComfyUI's optimized attention (sage/flash/xformers/pytorch per launch flags) on [B, h, N, d]."""
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, heads=q.shape[1], skip_reshape=True, skip_output_reshape=True)


def pick_dtypes(weight_dtype, params: int, supported):
    """``(load_device, dtype, manual_cast_dtype)`` for a network of ``params`` parameters, as core loaders choose."""
    load_device = mm.get_torch_device()
    dtype = weight_dtype or mm.unet_dtype(model_params=params, supported_dtypes=supported)
    manual_cast = mm.unet_manual_cast(dtype, load_device, supported)
    return load_device, dtype, manual_cast


__all__ = ["WEIGHT_DTYPES", "comfy_attention", "pick_dtypes"]
