"""What every node module shares: the checked node base, ComfyUI's attention for our networks, weight
precisions and the dtype choice."""

from __future__ import annotations

import math

import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.model_patcher

from ..framebridge_core.checkpoints import FOREIGN_KINDS, foreign_kind
from ..framebridge_core.errors import CheckpointError, ConfigError
from ..framebridge_core.families import detect_family

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
    combo inputs nor whether numbers are finite (NaN passes min/max), and it skips the min/max check for every
    input of a node that has a ``validate_inputs(**kwargs)``: all three are checked here. A linked input is
    None at validation time (its value does not exist yet) and is checked when the node runs."""
    for inp in schema.inputs:
        value = values.get(inp.id)
        if value is None:
            continue
        if isinstance(inp, io.Combo.Input) and inp.options and value not in inp.options:
            return (f"{schema.display_name}: {inp.id}={value!r} is not one of {_listed(list(inp.options))}; "
                    f"pick one from the list (a file must be in its models folder).")
        if isinstance(inp, (io.Float.Input, io.Int.Input)):
            problem = number_problem(value, inp.id, inp.min, inp.max)
            if problem:
                return f"{schema.display_name}: {problem}"
    return None


def number_problem(value, name: str, low=None, high=None) -> str | None:
    """'name=value is ...; ...' when ``value`` is not a finite number in [low, high], else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name}={value!r} is not a number; enter a number in the widget."
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}={value} is not a finite number; enter a value in the widget's range."
    if (low is not None and value < low) or (high is not None and value > high):
        shown = f"{'' if low is None else low}..{'' if high is None else high}"
        return f"{name}={value} is outside the allowed range {shown}; enter a value in that range."
    return None


def check_choice(value, options, node: str, name: str):
    """``value`` when it is one of ``options``, else a :class:`ConfigError` naming the node, the input and the
    choices (for values that reach a node through a link, which validation cannot see)."""
    options = list(options)
    if value not in options:
        raise ConfigError(f"{node}: {name}={value!r} is not one of {_listed(options)}; pick one from the list "
                          f"in '{node}'.")
    return value


def check_number(value, node: str, name: str, low=None, high=None):
    """``value`` when it is a finite number in [low, high], else a :class:`ConfigError` naming the node."""
    problem = number_problem(value, name, low, high)
    if problem:
        raise ConfigError(f"{node}: {problem} (set it in '{node}' or in the node that feeds it)")
    return value


#: which node loads each family the pack detects (for "wrong loader" messages)
FAMILY_LOADERS = {
    "latte_bridge": ("a FrameBridge-Latte bridge model", "'Load FrameBridge'"),
    "latte_neural_prior": ("a FrameBridge neural prior network", "'Load Neural Prior' (then 'Neural Prior')"),
    "videocrafter_bridge": ("a FrameBridge-VideoCrafter model",
                            "'Load FrameBridge Checkpoint' (the full .ckpt) or 'Load FrameBridge' (a UNet file)"),
    "cogvideox_bridge": ("a FrameBridge-CogVideoX transformer", "'Load FrameBridge'"),
    "modelscope_unet3d": ("a ModelScope / ZeroScope video UNet (BIVDiff)",
                          "'Load BIVDiff Video Model' (from models/diffusion_models)"),
    "vidrd_unet3d": ("a VidRD video UNet (BIVDiff's ModelT2V.pth)",
                     "'Load BIVDiff Video Model' (from models/diffusion_models)"),
}


def wrong_loader(name: str, family: str, node: str, takes: str) -> CheckpointError:
    """The error for a file of a known family given to a loader that does not read it."""
    what, loader = FAMILY_LOADERS.get(family, (f"a '{family}' checkpoint", "the loader of that family"))
    return CheckpointError(f"{node}: '{name}' is {what}; {node} loads {takes}. Load this file with {loader}.")


def identify(name: str, state_dict, metadata, node: str):
    """The :class:`FamilyInfo` of a checkpoint, or a :class:`CheckpointError` that names the file and the node; a
    well-known other kind of file (an SD checkpoint, a VAE, a LoRA, ...) gets a short message naming its loader."""
    try:
        return detect_family(state_dict, metadata)
    except CheckpointError as e:
        kind = foreign_kind(state_dict)
        if kind is not None:
            what, loader = FOREIGN_KINDS[kind]
            raise CheckpointError(f"{node}: '{name}' is {what}, not a model {node} loads. Load it with {loader}."
                                  ) from None
        raise CheckpointError(f"{node}: '{name}': {e}") from e


class CheckedNode(io.ComfyNode):
    """A V3 node whose combo choices and numbers are checked when the prompt is validated, so a bad value is
    refused with the node and input named before anything runs."""

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        return widget_problem(cls.define_schema(), values) or True


__all__ = ["WEIGHT_DTYPES", "CheckedNode", "check_choice", "check_number", "comfy_attention", "new_patcher",
           "number_problem", "pick_dtypes", "widget_problem", "FAMILY_LOADERS", "identify",
           "wrong_loader"]
