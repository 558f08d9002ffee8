"""Reading a FrameBridge-VideoCrafter checkpoint: split it into parts, infer the config, detect it.

The released model is a PyTorch-Lightning ``.ckpt`` whose ``state_dict`` holds the whole
``LatentVisualDiffusion``: ``model.diffusion_model.*`` the 3-D UNet, ``image_proj_model.*`` the
Resampler, ``cond_stage_model.model.*`` / ``embedder.model.visual.*`` the OpenCLIP ViT-H text and
vision towers, ``first_stage_model.*`` the SD VAE (hosts load these with their own encoders), and
schedule buffers (``alphas_cumprod``, ``bridge_sigmas``, ``bridge_aligned_t``, ...). The parts may
also come as separate files: a UNet file, optionally next to ``image_proj_model.*``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn as nn

from ...checkpoints import FamilyDetector, FamilyInfo, check_state_dict, load_weights_strict
from ...errors import CheckpointError, ConfigError
from .bridge import VideoCrafterBridge, VideoCrafterConfig, check_schedule_buffers
from .resampler import Resampler, ResamplerConfig
from .unet3d import UNet3D, UNet3DConfig

VIDEOCRAFTER = "videocrafter_bridge"
UNET_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
PART_PREFIXES = {
    "image_proj": "image_proj_model.",
    "clip_text": "cond_stage_model.",
    "clip_vision": "embedder.",
    "vae": "first_stage_model.",
}
#: Persistent buffers of the official LatentDiffusion (schedule tables); never network weights.
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "bridge_coef_x0", "bridge_coef_x1", "bridge_sqrt_var", "bridge_alphas", "bridge_alphas_bar",
    "bridge_sigmas", "bridge_sigmas_bar", "bridge_aligned_t", "scale_factor", "logvar", "scale_arr",
)
META_RESAMPLER_HEADS = "framebridge.resampler_heads"


@dataclass
class VideoCrafterParts:
    """A checkpoint split into its parts, each with its prefix stripped (empty dict when absent)."""

    unet: dict
    image_proj: dict
    clip_text: dict
    clip_vision: dict
    vae: dict
    buffers: dict
    unet_prefix: str = ""
    ignored: tuple = ()


def _unet_prefix(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    for p in UNET_PREFIXES:
        # input_blocks.0.1 is ModelScope UNetSD's first temporal transformer (DynamiCrafter's is init_attn)
        if f"{p}input_blocks.0.0.weight" in sd and f"{p}time_embed.0.weight" in sd and \
                f"{p}input_blocks.0.1.proj_in.weight" not in sd and \
                any(k.startswith(f"{p}input_blocks.") and ".temopral_conv." in k for k in sd):
            return p
    return None


def split_checkpoint(sd: Mapping[str, torch.Tensor]) -> VideoCrafterParts:
    """Split a full Lightning state dict (or a UNet / UNet+Resampler file) into its parts.

    DynamiCrafter-trained checkpoints name the frame-stride MLP ``framestride_embed``; it is
    renamed to ``fps_embedding`` as the official loader does (``inference.py:41-46``).
    """
    prefix = _unet_prefix(sd)
    if prefix is None:
        raise CheckpointError("no FrameBridge-VideoCrafter UNet in this checkpoint: expected keys like "
                              "'model.diffusion_model.input_blocks.0.0.weight' with temporal layers ('temopral_conv').")
    parts = {name: {} for name in PART_PREFIXES}
    unet, buffers, ignored = {}, {}, []
    for k, v in sd.items():
        for name, p in PART_PREFIXES.items():
            if k.startswith(p):
                parts[name][k[len(p):]] = v
                break
        else:
            if k in SCHEDULE_BUFFERS:
                buffers[k] = v
            elif k.startswith(prefix):
                unet[k[len(prefix):].replace("framestride_embed.", "fps_embedding.")] = v
            else:
                ignored.append(k)
    if "model_ema.decay" in sd or any(k.startswith("model_ema.") for k in ignored):
        ignored = [k for k in ignored if not k.startswith("model_ema.")]
    return VideoCrafterParts(unet=unet, buffers=buffers, unet_prefix=prefix, ignored=tuple(ignored), **parts)


def _count(sd, pattern: str) -> int:
    ids = {int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m}
    return max(ids) + 1 if ids else 0


def infer_unet_config(sd: Mapping[str, torch.Tensor], temporal_length: int = 16) -> UNet3DConfig:
    """The UNet architecture from key names and shapes (prefix-free UNet state dict)."""
    w_in, w_out = sd["input_blocks.0.0.weight"], sd.get("out.2.weight")
    if w_in.ndim != 4 or w_out is None or w_out.ndim != 4:
        raise CheckpointError(f"unexpected UNet in/out convolutions: input_blocks.0.0.weight {list(w_in.shape)}, "
                              f"out.2.weight {None if w_out is None else list(w_out.shape)}.")
    if any("relative_position" in k for k in sd) or any(k.endswith(".mask") for k in sd):
        raise CheckpointError("this VideoCrafter UNet uses relative-position or causal temporal attention, which the "
                              "released FrameBridge-VideoCrafter does not; it is not supported.")
    mc, in_ch, out_ch = int(w_in.shape[0]), int(w_in.shape[1]), int(w_out.shape[0])
    n_in = _count(sd, r"input_blocks\.(\d+)\.")
    downs = sorted(int(m.group(1)) for k in sd for m in [re.match(r"input_blocks\.(\d+)\.0\.op\.weight$", k)] if m)
    levels = len(downs) + 1
    if (n_in - 1 - len(downs)) % levels:
        raise CheckpointError(f"cannot read the UNet levels: {n_in} input blocks with {len(downs)} downsamplers.")
    nrb = (n_in - 1 - len(downs)) // levels
    mult, attn_res = [], []
    for level in range(levels):
        first = 1 + level * (nrb + 1)
        w = sd.get(f"input_blocks.{first}.0.in_layers.2.weight")
        if w is None:
            raise CheckpointError(f"missing input_blocks.{first}.0.in_layers.2.weight (level {level}).")
        mult.append(int(w.shape[0]) // mc)
        if f"input_blocks.{first}.1.proj_in.weight" in sd:
            attn_res.append(2 ** level)
    init = sd.get("init_attn.0.proj_in.weight")
    heads_add = 8
    if init is not None:
        head_ch = int(init.shape[0]) // heads_add
    else:
        head_ch = 64
    ctx = next((v for k, v in sd.items() if k.endswith("attn2.to_k.weight") and k.startswith("input_blocks.")), None)
    if ctx is None:
        raise CheckpointError("no cross-attention in this UNet (attn2.to_k.weight): not a text-conditioned VideoCrafter UNet.")
    depth = _count({k: v for k, v in sd.items() if k.startswith("input_blocks.1.1.")},
                   r"input_blocks\.1\.1\.transformer_blocks\.(\d+)\.") or 1
    try:
        return UNet3DConfig(
            in_channels=in_ch, out_channels=out_ch, model_channels=mc, channel_mult=tuple(mult), num_res_blocks=nrb,
            attention_resolutions=tuple(attn_res), num_head_channels=head_ch, transformer_depth=depth,
            context_dim=int(ctx.shape[1]), temporal_length=temporal_length, addition_attention=init is not None,
            addition_attention_heads=heads_add,
            image_cross_attention=any(k.endswith("attn2.to_k_ip.weight") for k in sd),
            image_cross_attention_scale_learnable=any(k.endswith("attn2.alpha") for k in sd),
            fs_condition="fps_embedding.0.weight" in sd)
    except ConfigError as e:
        raise CheckpointError(f"VideoCrafter UNet with an impossible configuration: {e}") from e


def infer_resampler_config(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str], tokens_per_frame: int = 16
                           ) -> tuple[ResamplerConfig, str]:
    lat = sd["latents"]
    dim, total = int(lat.shape[2]), int(lat.shape[1])
    inner = int(sd["layers.0.0.to_q.weight"].shape[0])
    if META_RESAMPLER_HEADS in metadata:
        heads = int(metadata[META_RESAMPLER_HEADS])
        note = f"Resampler heads={heads} from metadata {META_RESAMPLER_HEADS}"
    else:  # the head split is invisible in the weights; the official Resampler uses 64-d heads
        if inner % 64:
            raise CheckpointError(f"cannot infer the Resampler head count (inner width {inner} is not a multiple of 64); "
                                  f"save it as .safetensors with metadata {{'{META_RESAMPLER_HEADS}': '<heads>'}}.")
        heads = inner // 64
        note = f"Resampler heads={heads} from the official 64-d heads"
    if total % tokens_per_frame:
        raise CheckpointError(f"the Resampler has {total} queries, not a multiple of {tokens_per_frame} per frame.")
    try:
        cfg = ResamplerConfig(dim=dim, depth=_count(sd, r"layers\.(\d+)\."), dim_head=inner // heads, heads=heads,
                              num_queries=tokens_per_frame, embedding_dim=int(sd["proj_in.weight"].shape[1]),
                              output_dim=int(sd["proj_out.weight"].shape[0]),
                              ff_mult=int(sd["layers.0.1.1.weight"].shape[0]) // dim,
                              video_length=total // tokens_per_frame)
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"unreadable Resampler (image_proj_model) weights: {e}") from e
    return cfg, note


def expected_shapes(config: VideoCrafterConfig) -> dict[str, dict[str, list]]:
    """Key -> shape of each network part for a config (built on the meta device)."""
    unet = UNet3D(config.unet, device="meta")
    out = {"unet": {k: list(v.shape) for k, v in unet.state_dict().items()}}
    if config.resampler is not None:
        res = Resampler(config.resampler, device="meta")
        out["image_proj"] = {k: list(v.shape) for k, v in res.state_dict().items()}
    return out


def detect_videocrafter(sd: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None
                        ) -> Optional[FamilyInfo]:
    """FamilyInfo with a :class:`VideoCrafterConfig`, or None when the keys are not this family."""
    if _unet_prefix(sd) is None:
        return None
    metadata = dict(metadata or {})
    parts = split_checkpoint(sd)
    notes = []
    res_cfg = None
    frames = 16
    if parts.image_proj:
        res_cfg, note = infer_resampler_config(parts.image_proj, metadata)
        notes.append(note)
        frames = res_cfg.video_length or 1
    else:
        notes.append("no image_proj_model.* (Resampler): load it from a separate file or the full checkpoint")
    ucfg = infer_unet_config(parts.unet, temporal_length=frames)
    try:
        cfg = VideoCrafterConfig(unet=ucfg, resampler=res_cfg)
    except ConfigError as e:
        raise CheckpointError(f"FrameBridge-VideoCrafter parts that do not fit together: {e}") from e
    shapes = expected_shapes(cfg)
    check_state_dict(shapes["unet"], parts.unet, f"inferred FrameBridge-VideoCrafter UNet (width {ucfg.model_channels}, "
                                                 f"levels {list(ucfg.channel_mult)})")
    if res_cfg is not None:
        check_state_dict(shapes["image_proj"], parts.image_proj, "inferred Resampler (image_proj_model)")
    present = [n for n in ("clip_text", "clip_vision", "vae") if getattr(parts, n)]
    notes.append(f"also holds: {', '.join(present) or 'no encoders'}; {len(parts.buffers)} schedule buffers")
    return FamilyInfo(name=VIDEOCRAFTER, config=cfg, detector="videocrafter", notes=tuple(notes))


def build_videocrafter(info: FamilyInfo, *, operations=None, device=None, dtype=None, attention=None) -> nn.Module:
    return VideoCrafterBridge(info.config, operations=operations, device=device, dtype=dtype, attention=attention)


def load_videocrafter_weights(module: VideoCrafterBridge, sd: Mapping[str, torch.Tensor]) -> None:
    parts = split_checkpoint(sd)
    load_weights_strict(module.diffusion_model, parts.unet, "FrameBridge-VideoCrafter UNet")
    if hasattr(module, "image_proj_model"):
        load_weights_strict(module.image_proj_model, parts.image_proj, "Resampler (image_proj_model)")
    if parts.buffers:
        check_schedule_buffers(parts.buffers, module.schedule, module.aligned_t)


DETECTOR = FamilyDetector(
    name="videocrafter",
    looks_for=("model.diffusion_model.input_blocks.0.0.weight", "...temopral_conv...", "image_proj_model.latents"),
    detect=detect_videocrafter, build=build_videocrafter, load_weights=load_videocrafter_weights)

__all__ = [
    "DETECTOR", "META_RESAMPLER_HEADS", "SCHEDULE_BUFFERS", "VIDEOCRAFTER", "VideoCrafterParts", "detect_videocrafter",
    "expected_shapes", "infer_resampler_config", "infer_unet_config", "split_checkpoint",
]
