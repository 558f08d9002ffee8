"""What every node module shares: ComfyUI's attention for our networks, weight precisions, dtype choice."""

from __future__ import annotations

import torch

import comfy.model_management as mm
import comfy.model_patcher

#: the weight_dtype input of the loaders; fp8 stores the weights in 8 bits and computes in bf16/fp16 (core's manual cast)
WEIGHT_DTYPES = {"default": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                 "fp8_e4m3fn": torch.float8_e4m3fn}


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


def new_patcher(model_config, model_cls, params: int, weight_dtype=None) -> comfy.model_patcher.ModelPatcher:
    """A ``ModelPatcher`` around an empty ``model_cls(model_config)`` in the dtype core loaders would pick;
    the caller fills ``patcher.model`` with the checkpoint's weights."""
    load_device, dtype, manual_cast = pick_dtypes(weight_dtype, params, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_cls(model_config, device=mm.unet_inital_load_device(params, dtype))
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())


__all__ = ["WEIGHT_DTYPES", "comfy_attention", "new_patcher", "pick_dtypes"]
