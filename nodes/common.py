"""What every node module shares: the checked node base, ComfyUI's attention for our networks, weight
precisions and the dtype choice."""

from __future__ import annotations

import math

import torch
from comfy_api.latest import io

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


def _listed(options: list) -> str:
    shown = ", ".join(repr(o) for o in options[:8])
    return shown + (f", ... ({len(options)} in all)" if len(options) > 8 else "")


def widget_problem(schema, values: dict) -> str | None:
    """What is wrong with a node's widget values, or None. ComfyUI 0.3.64 checks neither the choices of V3
    combo inputs nor whether numbers are finite (NaN passes min/max), so a bad value would run silently."""
    for inp in schema.inputs:
        if inp.id not in values:
            continue
        value = values[inp.id]
        if isinstance(inp, io.Combo.Input) and inp.options and value not in inp.options:
            return (f"{schema.display_name}: {inp.id}={value!r} is not one of {_listed(list(inp.options))}; "
                    f"pick one from the list (a file must be in its models folder).")
        if isinstance(inp, (io.Float.Input, io.Int.Input)) and isinstance(value, float) and not math.isfinite(value):
            return f"{schema.display_name}: {inp.id}={value} is not a finite number; enter a value in the widget's range."
    return None


class CheckedNode(io.ComfyNode):
    """A V3 node whose combo choices and numbers are checked when the prompt is validated, so a bad value is
    refused with the node and input named before anything runs."""

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        return widget_problem(cls.define_schema(), values) or True


__all__ = ["WEIGHT_DTYPES", "CheckedNode", "comfy_attention", "new_patcher", "pick_dtypes", "widget_problem"]
