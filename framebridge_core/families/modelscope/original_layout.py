"""The original ModelScope ``text_to_video_ms_1.7b`` key layout, mapped onto the diffusers names the pack's
:class:`~.unet3d.ModelScopeUNet3D` uses (both describe the same network, tensor for tensor).

The original release (``text2video_pytorch_model.pth``) is a plain ``UNetSD`` state dict
(``modelscope/models/multi_modal/video_synthesis/unet_sd.py``): ``time_embed.{0,2}``,
``input_blocks.0.{0,1}`` (conv in, temporal transformer), ``input_blocks.k.{0,1,2}`` (ResBlock with its
``temopral_conv`` [sic], spatial transformer, temporal transformer), a bare ``Downsample`` at
``input_blocks.k.op``, ``middle_block.{0..3}``, ``output_blocks.k.{0,1,2}`` with the ``Upsample`` appended to
the level's last block (``.1.conv`` without attention, ``.3.conv`` with it) and ``out.{0,2}``. The map is the
one of diffusers' ``scripts/convert_ms_text_to_video_to_diffusers.py`` (``convert_ldm_unet_checkpoint``):
ResBlock ``in_layers.0/2``, ``emb_layers.1``, ``out_layers.0/3``, ``skip_connection`` become ``norm1``,
``conv1``, ``time_emb_proj``, ``norm2``, ``conv2``, ``conv_shortcut``; everything inside the transformers and
temporal convs keeps its name. The one tensor change: the temporal transformers' ``proj_in`` / ``proj_out``
are ``Conv1d`` (kernel 1, ``[out, in, 1]``) in the original and ``Linear`` (``[out, in]``) in diffusers.

Index arithmetic with ``L`` ResNets per down level: down level ``b``, layer ``j`` is ``input_blocks.{1 +
b*(L+1) + j}`` and its downsampler ``input_blocks.{1 + b*(L+1) + L}``; up level ``b``, layer ``j`` is
``output_blocks.{b*(L+1) + j}``.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from ...errors import CheckpointError

#: ResBlock sub-modules, diffusers name -> original name (the ``temopral_conv`` is handled separately)
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_RESNET_BACK = {v: k for k, v in _RESNET.items()}
_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0", "transformer_in": "input_blocks.0.1",
        "conv_norm_out": "out.0", "conv_out": "out.2"}
#: top-level keys every original-layout file has (its temporal convs are ``temopral_conv`` [sic], diffusers'
#: are ``temp_convs``: that tells the layouts apart)
ORIGINAL_MARKERS = ("input_blocks.0.0.weight", "input_blocks.0.1.proj_in.weight", "time_embed.0.weight",
                    "out.2.weight")
#: prefixes a re-saved original may carry (an LDM-style wrapper); stripped when every key has one
_WRAPPERS = ("model.diffusion_model.", "diffusion_model.")


def _is_temporal_projection(diffusers_key: str) -> bool:
    """``proj_in`` / ``proj_out`` weights of a temporal transformer (``transformer_in`` or ``temp_attentions``)."""
    return bool(re.search(r"(^transformer_in|\.temp_attentions\.\d+)\.proj_(in|out)\.weight$", diffusers_key))


def _resnet_to_original(rest: str) -> str:
    name, _, tail = rest.partition(".")
    if name not in _RESNET:
        raise CheckpointError(f"unknown ResNet parameter '{rest}' in a ModelScope UNet3D key.")
    return f"{_RESNET[name]}.{tail}"


def diffusers_key_to_original(key: str, layers_per_block: int) -> str:
    """The original ModelScope name of one diffusers ``UNet3DConditionModel`` parameter name."""
    per = layers_per_block + 1
    for new, old in _TOP.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|temp_convs|attentions|temp_attentions|downsamplers|upsamplers)"
                 r"\.(\d+)\.(.+)$", key)
    if m:
        side, b, part, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if side == "down":
            if part == "downsamplers":
                return f"input_blocks.{1 + b * per + layers_per_block}.op.{rest.removeprefix('conv.')}"
            block = f"input_blocks.{1 + b * per + j}"
        else:
            if part == "upsamplers":
                # the Upsample follows the level's last layer: after the ResBlock alone (.1) or after
                # ResBlock, spatial and temporal transformer (.3); up level 0 is the one without attention
                return f"output_blocks.{b * per + layers_per_block}.{1 if b == 0 else 3}.{rest}"
            block = f"output_blocks.{b * per + j}"
        return _within_layer(block, part, rest)
    m = re.match(r"mid_block\.(resnets|temp_convs|attentions|temp_attentions)\.(\d+)\.(.+)$", key)
    if m:
        part, j, rest = m.group(1), int(m.group(2)), m.group(3)
        block = {("resnets", 0): "middle_block.0", ("temp_convs", 0): "middle_block.0",
                 ("resnets", 1): "middle_block.3", ("temp_convs", 1): "middle_block.3",
                 ("attentions", 0): "middle_block.1", ("temp_attentions", 0): "middle_block.2"}.get((part, j))
        if block is None:
            raise CheckpointError(f"'{key}' is not a parameter of a ModelScope UNet3D mid block.")
        if part == "resnets":  # the mid block's modules are not wrapped in a per-layer ModuleList
            return f"{block}.{_resnet_to_original(rest)}"
        return f"{block}.temopral_conv.{rest}" if part == "temp_convs" else f"{block}.{rest}"
    raise CheckpointError(f"'{key}' is not a parameter name of a ModelScope / ZeroScope UNet3D (diffusers layout).")


def _within_layer(block: str, part: str, rest: str) -> str:
    if part == "resnets":
        return f"{block}.0.{_resnet_to_original(rest)}"
    if part == "temp_convs":
        return f"{block}.0.temopral_conv.{rest}"
    return f"{block}.{1 if part == 'attentions' else 2}.{rest}"


def original_key_to_diffusers(key: str, layers_per_block: int) -> str:
    """The diffusers name of one original ModelScope ``UNetSD`` parameter name (inverse of
    :func:`diffusers_key_to_original`)."""
    per = layers_per_block + 1
    for new, old in _TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old):]

    def layer(prefix: str, sub: int, rest: str) -> str:
        if sub == 0:
            if rest.startswith("temopral_conv."):
                return f"{prefix}.temp_convs.{{j}}.{rest[len('temopral_conv.'):]}"
            name, _, tail = rest.partition(".")
            name2, _, tail2 = tail.partition(".")
            orig = f"{name}.{name2}" if f"{name}.{name2}" in _RESNET_BACK else name
            if orig not in _RESNET_BACK:
                raise CheckpointError(f"unknown ResBlock parameter '{rest}' in the original ModelScope key.")
            return f"{prefix}.resnets.{{j}}.{_RESNET_BACK[orig]}{rest[len(orig):]}"
        if sub in (1, 2):
            return f"{prefix}.{'attentions' if sub == 1 else 'temp_attentions'}.{{j}}.{rest}"
        raise CheckpointError(f"original ModelScope key with an unknown sub-module {sub}.")

    m = re.match(r"input_blocks\.(\d+)\.(.+)$", key)
    if m:
        k, rest = int(m.group(1)), m.group(2)
        if k < 1:
            raise CheckpointError(f"'{key}' is not a parameter of a ModelScope UNetSD.")
        b, j = divmod(k - 1, per)
        if j == layers_per_block:
            if not rest.startswith("op."):
                raise CheckpointError(f"'{key}': input block {k} should be a downsampler (op.weight / op.bias) with "
                                      f"{layers_per_block} ResNets per level.")
            return f"down_blocks.{b}.downsamplers.0.conv.{rest[3:]}"
        sub, _, tail = rest.partition(".")
        return layer(f"down_blocks.{b}", int(sub), tail).format(j=j) if sub.isdigit() else _bad(key)
    m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.+)$", key)
    if m:
        k, sub, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        b, j = divmod(k, per)
        if sub in (1, 3) and re.fullmatch(r"conv\.(weight|bias)", rest):
            return f"up_blocks.{b}.upsamplers.0.{rest}"
        return layer(f"up_blocks.{b}", sub, rest).format(j=j)
    m = re.match(r"middle_block\.(\d+)\.(.+)$", key)
    if m:
        sub, rest = int(m.group(1)), m.group(2)
        if sub in (0, 3):
            return layer("mid_block", 0, rest).format(j=0 if sub == 0 else 1)
        if sub in (1, 2):
            return f"mid_block.{'attentions' if sub == 1 else 'temp_attentions'}.0.{rest}"
    return _bad(key)


def _bad(key: str) -> str:
    raise CheckpointError(f"'{key}' is not a parameter name of an original ModelScope text-to-video UNet (UNetSD).")


def strip_wrapper(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without an LDM-style ``(model.)diffusion_model.`` prefix that every key carries."""
    for p in _WRAPPERS:
        if sd and all(k.startswith(p) for k in sd):
            return {k[len(p):]: v for k, v in sd.items()}
    return dict(sd)


def layout_of(sd: Mapping[str, torch.Tensor]) -> str:
    """``"original"``, ``"diffusers"`` or ``""`` (not a ModelScope UNet); a mix of both layouts or an original
    file without its top-level layers is a :class:`CheckpointError`."""
    sd = strip_wrapper(sd)
    original = any(".temopral_conv." in k for k in sd)
    diffusers = any(".temp_convs." in k for k in sd)
    if original and diffusers:
        both = [k for k in sd if ".temopral_conv." in k][:1] + [k for k in sd if ".temp_convs." in k][:1]
        raise CheckpointError(
            f"the checkpoint mixes the original ModelScope layout with the diffusers layout (e.g. {both[0]} and "
            f"{both[1]}): two models merged into one file. Use the original text2video_pytorch_model.pth or the "
            f"diffusers unet/diffusion_pytorch_model.safetensors as released.")
    if original:
        missing = [k for k in ORIGINAL_MARKERS if k not in sd]
        if missing:
            raise CheckpointError(
                f"an original-layout ModelScope UNet without {', '.join(missing)}: the file is incomplete. Copy "
                f"text2video_pytorch_model.pth again and compare its size with the source.")
        return "original"
    return "diffusers" if diffusers else ""


def as_diffusers_layout(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """``(state dict in diffusers names, layout it came in)``; anything but the original layout is returned as is."""
    layout = layout_of(sd)
    return (original_to_diffusers(sd), layout) if layout == "original" else (dict(sd), layout)


def original_layers_per_block(sd: Mapping[str, torch.Tensor]) -> int:
    """``L`` from where the first downsampler sits (``input_blocks.{L+1}.op``)."""
    ops = sorted(int(m.group(1)) for k in sd for m in [re.match(r"input_blocks\.(\d+)\.op\.weight$", k)] if m)
    if not ops:
        raise CheckpointError("an original-layout ModelScope UNet without any downsampler (input_blocks.N.op.weight): "
                              "the file is incomplete or not a ModelScope text-to-video UNet.")
    return ops[0] - 1


def original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original ``UNetSD`` state dict to diffusers names (temporal ``Conv1d`` projections squeezed)."""
    sd = strip_wrapper(sd)
    lpb = original_layers_per_block(sd)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        new = original_key_to_diffusers(k, lpb)
        if _is_temporal_projection(new):
            if v.ndim != 3 or v.shape[-1] != 1:
                raise CheckpointError(f"'{k}' has shape {list(v.shape)}; the original temporal transformer's "
                                      f"projection is a kernel-1 Conv1d [out, in, 1].")
            v = v[:, :, 0]
        if new in out:
            raise CheckpointError(f"'{k}' and another key both map to '{new}': not a ModelScope UNetSD state dict.")
        out[new] = v
    return out


def diffusers_to_original(sd: Mapping[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """Rename a diffusers-layout state dict to the original ``UNetSD`` names (the inverse of
    :func:`original_to_diffusers`)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        out[diffusers_key_to_original(k, layers_per_block)] = v[:, :, None] if _is_temporal_projection(k) else v
    return out


__all__ = ["ORIGINAL_MARKERS", "as_diffusers_layout", "diffusers_key_to_original", "diffusers_to_original", "layout_of", "original_key_to_diffusers",
           "original_layers_per_block", "original_to_diffusers", "strip_wrapper"]
