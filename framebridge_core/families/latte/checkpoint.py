"""Recognise a FrameBridge-Latte state dict and infer its whole config from keys and shapes.

Official checkpoints carry no config, so everything the network needs is read off the weights
(the rules are in :func:`_detect_latte`); the head count, which the weights do not show, comes
from metadata or the official presets (:func:`_latte_num_heads`). The inferred config is then
checked key by key against the model it builds, so a wrong guess fails loudly before loading.
"""

from __future__ import annotations

import math
import re
from typing import Mapping, Optional

import torch
import torch.nn as nn

from ...checkpoints import FamilyDetector, FamilyInfo, check_state_dict, load_weights_strict
from ...errors import CheckpointError
from .network import OFFICIAL_NUM_HEADS, OUTPUTS, LatteConfig, LatteModel, LatteNeuralPrior

LATTE_BRIDGE = "latte_bridge"
LATTE_NEURAL_PRIOR = "latte_neural_prior"
#: Safetensors metadata key that supplies the attention head count.
META_NUM_HEADS = "framebridge.num_heads"

_LATTE_KEYS = ("x_embedder.proj.weight", "pos_embed", "temp_embed", "final_layer.linear.weight",
               "blocks.0.attn.qkv.weight")


def _latte_num_heads(hidden: int, metadata: Mapping[str, str]) -> tuple[int, str]:
    """``(num_heads, note)``: the head count is not visible in the weights.

    It comes from the safetensors metadata ``framebridge.num_heads`` if present, else from the
    official presets by hidden size (1152/1024 -> 16, 768 -> 12, 384 -> 6), else ``D // 64``
    (the note goes to ``FamilyInfo.notes``).
    """
    if META_NUM_HEADS in metadata:
        try:
            heads = int(metadata[META_NUM_HEADS])
        except ValueError:
            raise CheckpointError(f"metadata {META_NUM_HEADS}={metadata[META_NUM_HEADS]!r} is not an integer")
        return heads, f"num_heads={heads} from metadata {META_NUM_HEADS}"
    if hidden in OFFICIAL_NUM_HEADS:
        heads = OFFICIAL_NUM_HEADS[hidden]
        return heads, f"num_heads={heads} from the official Latte preset for hidden size {hidden}"
    if hidden % 64 == 0:
        heads = hidden // 64
        return heads, f"num_heads={heads} guessed as hidden/64 (not an official size; set metadata {META_NUM_HEADS})"
    raise CheckpointError(
        f"Cannot infer the attention head count of a Latte model with hidden size {hidden} "
        f"(official sizes: {sorted(OFFICIAL_NUM_HEADS)}). Save it as .safetensors with metadata "
        f"{{'{META_NUM_HEADS}': '<heads>'}}.")


#: Safetensors metadata key naming what a bridge network's output means (the weights cannot tell)
META_PREDICTS = "framebridge.predicts"


def _latte_output(metadata: Mapping[str, str]) -> str:
    """``eps_psi`` (official checkpoints, no metadata), or ``precond`` / ``x0`` (the project's tiny models)."""
    value = metadata.get(META_PREDICTS, "eps_psi")
    if value not in OUTPUTS:
        raise CheckpointError(
            f"metadata {META_PREDICTS}={value!r} is not a bridge output this pack can sample "
            f"(supported: {', '.join(OUTPUTS)}); v-prediction models of the quality benchmark are "
            f"for `python -m framebridge_core bench quality`.")
    return value


def _latte_shapes(sd: Mapping[str, torch.Tensor]) -> tuple[int, int, int, int, int]:
    """``(hidden, in_channels, patch, grid, out_channels)`` from the patch embedding, ``pos_embed``
    and the final layer (see :func:`_detect_latte`)."""
    w = sd["x_embedder.proj.weight"]
    pos, temp = sd["pos_embed"], sd["temp_embed"]
    lin = sd["final_layer.linear.weight"]
    if w.ndim != 4 or w.shape[2] != w.shape[3] or pos.ndim != 3 or temp.ndim != 3 or lin.ndim != 2:
        raise CheckpointError(
            f"Latte-like keys with unexpected shapes: x_embedder.proj.weight {list(w.shape)}, "
            f"pos_embed {list(pos.shape)}, temp_embed {list(temp.shape)}, "
            f"final_layer.linear.weight {list(lin.shape)}.")
    hidden, in_ch, p = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    n_patch = int(pos.shape[1])
    grid = math.isqrt(n_patch)
    if grid * grid != n_patch:
        raise CheckpointError(f"pos_embed has {n_patch} patches, not a square grid; unsupported Latte layout.")
    if lin.shape[0] % (p * p):
        raise CheckpointError(f"final_layer.linear.weight {list(lin.shape)} does not fit patch size {p}.")
    out_ch = int(lin.shape[0]) // (p * p)
    return hidden, in_ch, p, grid, out_ch


#: Safetensors metadata key: the samplers keep the condition frame as video frame 0
META_KEEP_FIRST_FRAME = "framebridge.keep_first_frame"


def _latte_head(sd: Mapping[str, torch.Tensor], final_ch: int) -> tuple[int, int, int]:
    """``(out_channels, head_width, head_features)``: a conv head (``head.layers.{0,2,4}``, the
    project's tiny models) takes the output channels from its last convolution; the rest of the
    final layer's channels are the head's features. No head: every final channel is output."""
    first, last = sd.get("head.layers.0.weight"), sd.get("head.layers.4.weight")
    if first is None and last is None:
        return final_ch, 0, 0
    if first is None or last is None or first.ndim != 4 or last.ndim != 4 or last.shape[0] > final_ch:
        raise CheckpointError("the Latte checkpoint has an incomplete or malformed conv head (head.layers.* keys); "
                              "re-export it with `python -m framebridge_core train`.")
    out_ch = int(last.shape[0])
    return out_ch, int(first.shape[0]), final_ch - out_ch


def _detect_latte(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Optional[FamilyInfo]:
    """The FrameBridge-Latte config of ``sd``; rules (official ``framebridge-latte/models/latte.py``):

    * ``x_embedder.proj.weight [D, C_in, p, p]`` -> hidden size ``D``, input channels, patch size.
    * ``pos_embed [1, N, D]`` -> input size ``sqrt(N) * p``; ``temp_embed [1, F, D]`` -> frames.
    * ``t_embedder.*`` present -> bridge model (``condition_type="concat_pre"``, video frames
      ``F - 1``); absent -> neural prior (``condition_type=None``, ``F`` frames).
    * ``y_embedder.embedding_table.weight [R, D]`` -> ``num_classes = R - 1`` with a null class
      ``R - 1`` (official training always uses label dropout 0.1, which adds that row; UCF-101:
      102 rows, null class 101). No table -> unconditional.
    * ``final_layer.linear.weight [p*p*C_out, D]`` -> output channels; ``C_out == 2*C_in`` means
      ``learn_sigma``; ``C_in == 2*C_out`` is the neural-prior channel concat (8 -> 4).
    * ``head.layers.{0,4}.weight`` (the tiny models' conv head) -> head width and output channels;
      ``final_layer.overlap.weight`` -> the overlap-add unpatchify (``head_overlap``);
      metadata ``framebridge.keep_first_frame = "true"`` -> frame 0 is kept by the samplers.
    * depth = number of ``blocks.N``; mlp ratio from ``blocks.0.mlp.fc1.weight``.
    * the head count: :func:`_latte_num_heads`.
    * Finally every key and shape is checked against the model that config builds.
    """
    if not all(k in sd for k in _LATTE_KEYS):
        return None
    if "cond_embedder.proj.weight" in sd or any(".attn.wq." in k for k in sd):
        raise CheckpointError(
            "This is a Latte model with cross-attention/adaLN image conditioning "
            "(cond_embedder / attn.wq keys), not a FrameBridge-Latte model (concat_pre); it is "
            "not supported.")
    hidden, in_ch, p, grid, final_ch = _latte_shapes(sd)
    out_ch, head_width, head_features = _latte_head(sd, final_ch)
    block_ids = {int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    depth = max(block_ids) + 1
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    mlp_ratio = float(fc1.shape[0]) / hidden if fc1 is not None else 4.0
    has_t = "t_embedder.mlp.0.weight" in sd
    freq = int(sd["t_embedder.mlp.0.weight"].shape[1]) if has_t else 256
    table = sd.get("y_embedder.embedding_table.weight")
    num_classes = int(table.shape[0]) - 1 if table is not None else 0
    heads, head_note = _latte_num_heads(hidden, metadata)
    seq = int(sd["temp_embed"].shape[1])
    if has_t:
        if seq < 2:
            raise CheckpointError(f"temp_embed has {seq} frame(s); a concat_pre bridge model needs at least 2.")
        name, cond_type, frames = LATTE_BRIDGE, "concat_pre", seq - 1
    else:
        name, cond_type, frames = LATTE_NEURAL_PRIOR, None, seq
    try:
        cfg = LatteConfig(input_size=grid * p, patch_size=p, in_channels=in_ch, out_channels=out_ch,
                          hidden_size=hidden, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio,
                          num_frames=frames, num_classes=num_classes, class_dropout=table is not None,
                          condition_type=cond_type, has_timestep=has_t,
                          learn_sigma=out_ch == 2 * in_ch, frequency_embedding_size=freq,
                          output=_latte_output(metadata) if has_t else "eps_psi",
                          head_width=head_width, head_features=head_features,
                          head_overlap="final_layer.overlap.weight" in sd,
                          keep_first_frame=metadata.get(META_KEEP_FIRST_FRAME, "") == "true")
    except Exception as e:  # ConfigError from impossible combinations
        raise CheckpointError(f"Latte checkpoint with an impossible configuration: {e}") from e
    expected = LatteModel(cfg, device="meta").state_dict()
    check_state_dict({k: list(v.shape) for k, v in expected.items()}, sd,
                     f"inferred {name} (hidden {hidden}, depth {depth}, {in_ch} input channels)")
    return FamilyInfo(name=name, config=cfg, detector="latte", notes=(head_note,))


def _build_latte(info: FamilyInfo, *, operations=None, device=None, dtype=None, attention=None) -> nn.Module:
    cls = LatteNeuralPrior if info.name == LATTE_NEURAL_PRIOR else LatteModel
    return cls(info.config, operations=operations, device=device, dtype=dtype, attention=attention)


def _load_latte(module: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    target = module.nwarp_model if isinstance(module, LatteNeuralPrior) else module
    load_weights_strict(target, sd, "Latte network")


DETECTOR = FamilyDetector(name="latte", looks_for=_LATTE_KEYS, detect=_detect_latte, build=_build_latte,
                          load_weights=_load_latte)

__all__ = ["DETECTOR", "LATTE_BRIDGE", "LATTE_NEURAL_PRIOR", "META_KEEP_FIRST_FRAME", "META_NUM_HEADS", "META_PREDICTS"]
