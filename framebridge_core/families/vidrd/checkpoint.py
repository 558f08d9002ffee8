"""Recognise a VidRD video UNet (BIVDiff's ``ModelT2V.pth``) and infer its config from keys and shapes,
never from the file name.

The released ``ModelT2V.pth`` is a PyTorch Lightning checkpoint: ``{"state_dict": {...}, ...}`` whose
keys are ``unet.*`` (the video UNet) and possibly ``text_encoder.*`` / ``vae.*`` / ``clip.*`` (the
other modules of the official ``SDVideoModel``). It is read with ``torch.load(weights_only=True)``
(:func:`framebridge_core.checkpoints.load_state_dict`); only ``unet.*`` is used here. A safetensors
file of the bare UNet keys (no prefix) loads too.

What the weights do not show comes from safetensors metadata or the official values:

* ``framebridge.head_channels``: channels per attention head (SD 2.1: 64);
* ``framebridge.add_temp_embed``: frame-position embedding before the temporal attention (VidRD: true);
* ``framebridge.norm_num_groups``: GroupNorm groups of ResNets / transformers (SD: 32);
* ``framebridge.prediction_type`` (or ``prediction_type``): ``epsilon`` or ``v_prediction``. VidRD is
  fine-tuned from Stable Diffusion 2.1-*base* (BIVDiff's ``pretrained_model_path``), whose scheduler
  says ``prediction_type: epsilon``; the 768-px SD 2.1 would be ``v_prediction``. Default: epsilon.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from ...checkpoints import FamilyDetector, FamilyInfo, check_state_dict, load_weights_strict
from ...errors import CheckpointError, ConfigError
from .frames import VidRDFrames
from .unet3d import VidRDUNet3D, VidRDUNet3DConfig, expected_state_dict_shapes

VIDRD = "vidrd_unet3d"
#: the official file name (BIVDiff's configs/*_vidrd.yaml: ./checkpoints/VidRD/ModelT2V.pth)
OFFICIAL_FILE = "ModelT2V.pth"
META_HEAD_CHANNELS = "framebridge.head_channels"
META_TEMP_EMBED = "framebridge.add_temp_embed"
META_NORM_GROUPS = "framebridge.norm_num_groups"
META_PREDICTION = "framebridge.prediction_type"
#: prefix of the UNet's keys in the official Lightning checkpoint
UNET_PREFIX = "unet."
EPSILON, V_PREDICTION = "epsilon", "v_prediction"
_PREDICTIONS = {"epsilon": EPSILON, "eps": EPSILON, "v_prediction": V_PREDICTION, "v": V_PREDICTION}
_KEYS = ("conv_in.weight", "down_blocks.0.resnets.0.conv1.weight",
         "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
         "down_blocks.0.attentions.0.transformer_blocks.0.temp_attn.to_q.weight", "conv_out.weight")


@dataclass(frozen=True)
class VidRDSpec:
    """A detected VidRD file: the network's config and what its outputs mean."""

    unet: VidRDUNet3DConfig
    prediction_type: str = EPSILON


def unet_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """The UNet's tensors of a VidRD state dict (``unet.*`` of the Lightning checkpoint, prefix removed, or the
    whole dict when no key has it) and notes on the groups of keys left out."""
    if not any(k.startswith(UNET_PREFIX) for k in sd):
        return dict(sd), ()
    unet = {k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    others = sorted({k.split(".", 1)[0] for k in sd if not k.startswith(UNET_PREFIX)})
    notes = (f"used the {len(unet)} unet.* tensors; ignored {', '.join(o + '.*' for o in others)} "
             f"(the text encoder comes from a CLIP loader)",) if others else ()
    return unet, notes


def text_encoder_state_dict(sd: Mapping[str, torch.Tensor], name: str = "the file") -> dict[str, torch.Tensor]:
    """The ``text_encoder.*`` tensors of the official Lightning checkpoint, prefix removed: a transformers
    ``CLIPTextModel`` (``text_model.*`` keys, SD 2.1's OpenCLIP-H) that core 'Load CLIP' (type
    ``stable_diffusion``) reads once saved as .safetensors. The official ``SDVideoModel.setup`` loads these
    weights over SD 2.1-base's encoder when the file has them."""
    te = {k[len("text_encoder."):]: v for k, v in sd.items() if k.startswith("text_encoder.")}
    if not te:
        raise CheckpointError(f"{name} holds no text_encoder.* weights: use Stable Diffusion 2.1-base's text encoder "
                              f"(OpenCLIP-H, text_encoder/model.safetensors) with 'Load CLIP' (type stable_diffusion).")
    if not any(k.startswith("text_model.encoder.layers.") for k in te):
        raise CheckpointError(f"{name}: its text_encoder.* keys are not a transformers CLIPTextModel "
                              f"(first keys: {', '.join(sorted(te)[:3])}).")
    return {k: v.contiguous() for k, v in te.items()}


def _meta(metadata: Mapping[str, str], key: str, parse, default, what: str):
    if key not in metadata:
        return default
    try:
        return parse(str(metadata[key]).strip())
    except ValueError:
        raise CheckpointError(f"metadata {key}={metadata[key]!r} is not {what}") from None


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ValueError(text)


def prediction_type(metadata: Mapping[str, str]) -> str:
    """``epsilon`` or ``v_prediction`` from the file's metadata (``framebridge.prediction_type`` or
    ``prediction_type``, as a diffusers scheduler config names it); epsilon when it says nothing."""
    for key in (META_PREDICTION, "prediction_type"):
        if key in metadata:
            value = str(metadata[key]).strip().lower()
            if value not in _PREDICTIONS:
                raise CheckpointError(f"metadata {key}={metadata[key]!r}: expected 'epsilon' or 'v_prediction'.")
            return _PREDICTIONS[value]
    return EPSILON


def _has_vidrd_keys(sd: Mapping[str, torch.Tensor]) -> bool:
    return all(k in sd for k in _KEYS)


def detect_vidrd(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Optional[FamilyInfo]:
    unet, notes = unet_state_dict(sd)
    if not _has_vidrd_keys(unet):
        return None
    if "transformer_in.proj_in.weight" in unet or any(".temp_attentions." in k for k in unet):
        return None  # a ModelScope / ZeroScope UNet (its own detector reads it)
    if any(k.startswith("temp_transformer.") for k in unet):
        raise CheckpointError("VidRD UNet with temp_transformer.* (add_temp_transformer=True): not the released "
                              "VidRD layout, and not implemented.")
    first_resnet = re.compile(r"down_blocks\.(\d+)\.resnets\.0\.conv1\.weight$")
    levels = sorted({int(m.group(1)) for k in unet for m in [first_resnet.match(k)] if m})
    if levels != list(range(len(levels))) or len(levels) < 2:
        raise CheckpointError(f"VidRD UNet keys with down_blocks {levels}: the file is incomplete.")
    boc = tuple(int(unet[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in levels)
    layers = len({k.split(".")[3] for k in unet
                  if k.startswith("down_blocks.0.resnets.") and k.endswith("conv1.weight")})
    proj_in = unet.get("down_blocks.0.attentions.0.proj_in.weight")
    if proj_in is None:
        raise CheckpointError("VidRD UNet without down_blocks.0.attentions.0.proj_in.weight: the file is incomplete.")
    head = _meta(metadata, META_HEAD_CHANNELS, int, 64, "an integer")
    temp_embed = _meta(metadata, META_TEMP_EMBED, _bool, True, "true or false")
    groups = _meta(metadata, META_NORM_GROUPS, int, 32, "an integer")
    try:
        cfg = VidRDUNet3DConfig(
            in_channels=int(unet["conv_in.weight"].shape[1]), out_channels=int(unet["conv_out.weight"].shape[0]),
            block_out_channels=boc, layers_per_block=layers,
            cross_attention_dim=int(unet["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape[1]),
            head_channels=head, use_linear_projection=proj_in.ndim == 2,
            add_temp_conv="down_blocks.0.temp_convs.0.convs.3.weight" in unet,
            add_temp_embed=temp_embed, norm_num_groups=groups)
    except ConfigError as e:
        raise CheckpointError(f"VidRD UNet checkpoint with an impossible configuration: {e}") from e
    check_state_dict(expected_state_dict_shapes(cfg), unet,
                     f"inferred VidRD UNet (channels {list(boc)}, {layers} layers per block)")
    spec = VidRDSpec(unet=cfg, prediction_type=prediction_type(metadata))
    notes = notes + (
        f"{sum(v.numel() for v in unet.values()) / 1e9:.2f}B parameters; head width {head}"
        + ("" if META_HEAD_CHANNELS in metadata else " (SD 2.1's, not visible in the weights)")
        + f"; frame-position embedding {'on' if temp_embed else 'off'}"
        + ("" if META_TEMP_EMBED in metadata else " (VidRD's, not visible in the weights)")
        + f"; {spec.prediction_type} prediction"
        + ("" if META_PREDICTION in metadata or "prediction_type" in metadata
           else " (SD 2.1-base's, not stated in the file)"),)
    return FamilyInfo(name=VIDRD, config=spec, detector=VIDRD, notes=notes)


def require_vidrd(name: str, sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> FamilyInfo:
    """The :class:`FamilyInfo` of a VidRD file, or a :class:`CheckpointError` naming ``name`` and what the
    file is instead (a ModelScope / ZeroScope UNet is told apart by its ``transformer_in`` / ``temp_attentions``
    keys)."""
    info = detect_vidrd(sd, metadata)
    if info is not None:
        return info
    unet, _ = unet_state_dict(sd)
    if "transformer_in.proj_in.weight" in unet or any(".temp_attentions." in k for k in unet):
        raise CheckpointError(f"'{name}' is a ModelScope / ZeroScope video UNet (transformer_in, temp_attentions), "
                              f"not VidRD (whose transformers hold temp_attn / temp_norm and whose temp_convs are "
                              f"'convs.N').")
    missing = [k for k in _KEYS if k not in unet]
    raise CheckpointError(f"'{name}' is not a VidRD UNet: it lacks {', '.join(missing[:3])}"
                          f"{' (+more)' if len(missing) > 3 else ''} ({len(unet)} tensors, first keys: "
                          f"{', '.join(sorted(unet)[:4])}). Expected BIVDiff's {OFFICIAL_FILE} (unet.* keys) or its "
                          f"UNet saved as .safetensors.")


def _build(info: FamilyInfo, *, operations=None, device=None, dtype=None, attention=None):
    return VidRDUNet3D(info.config.unet, operations=operations, device=device, dtype=dtype, attention=attention)


def _load(module, sd):
    target = module.net if isinstance(module, VidRDFrames) else module
    load_weights_strict(target, unet_state_dict(sd)[0], "VidRD UNet")


DETECTOR = FamilyDetector(name=VIDRD, looks_for=tuple(f"[{UNET_PREFIX}]{k}" for k in (_KEYS[0], _KEYS[3])),
                          detect=detect_vidrd, build=_build, load_weights=_load)

__all__ = ["DETECTOR", "EPSILON", "META_HEAD_CHANNELS", "META_NORM_GROUPS", "META_PREDICTION", "META_TEMP_EMBED",
           "OFFICIAL_FILE", "V_PREDICTION", "VIDRD", "VidRDSpec", "detect_vidrd", "prediction_type", "require_vidrd",
           "text_encoder_state_dict", "unet_state_dict"]
