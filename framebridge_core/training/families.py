"""SNR-aligned fine-tuning (SAF) of the released backbones' families from a diffusion checkpoint.

``train --family videocrafter|cogvideox --kind saf --init-from <diffusion checkpoint>`` builds the
family's bridge network (:class:`~framebridge_core.families.videocrafter.bridge.VideoCrafterBridge`,
:class:`~framebridge_core.families.cogvideox.bridge.CogVideoXBridge`), fills it from a text-to-video
diffusion checkpoint as the official code does, and trains it with the family's own alignment and
parameterisation (docs/math.md §1.5, §2.4):

* VideoCrafter: input ``z = (x_t − b·y)/n`` and the float ``t̃`` of its SAF table (SD scaled-linear
  ᾱ, the official algorithm); target ``eps_psi = (x_t − x0)/σ``. Init (``utils_train.py``): every
  tensor of matching name and shape is copied; the input convolution (4 → 8 channels) keeps the new
  network's initialisation; modules the text-to-video model lacks (Resampler, image
  cross-attention, frame-stride embedding) start at their initialisation, the frame-stride MLP's last
  layer and the image-attention gate at zero, as the official network does.
* CogVideoX: the same ``z`` at ``t̃`` of CogVideoX-2B's ᾱ (SNR shift 3, zero terminal SNR); target
  v in aligned coordinates ``(a·ε − c·x0)/n``. Init: the text-to-video transformer (16 input
  channels) with the 16 image-latent input channels added at zero, so the network starts as the
  pretrained model on ``z``.

``--kind plain-finetune`` is the paper's ablation baseline: the same network, initialisation and
target, but fine-tuned without SNR alignment: the network sees the raw bridge state ``x_t`` and the
bridge index ``i`` as its timestep. The pack's samplers align every VideoCrafter / CogVideoX model, so
these files are for comparisons with the family's own code (``framebridge.timestep`` says so).

The data are precomputed latents and embeddings (:class:`~.data.video_folder.VideoFolderDataset`
rows with a ``latents`` file): the VAE and text/image encoders of these families are large and run
once, before training. The exported file is what Load FrameBridge / Load FrameBridge Checkpoint read
(:func:`framebridge_core.families.load_model`).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..bridge.alignment import aligned_input, training_target
from ..checkpoints import load_state_dict
from ..errors import CheckpointError, ConfigError, ShapeError
from ..vp import gather

#: what each family trains (the pack's samplers read these families as SAF bridges only; plain-finetune is the
#: ablation baseline without SNR alignment)
FAMILY_KINDS = {"videocrafter": ("saf", "plain-finetune"), "cogvideox": ("saf", "plain-finetune")}
META = "framebridge."


def check_family_kind(family: str, kind: str, init_from: str) -> None:
    if family == "latte":
        from .latte_family import check_latte_kind

        return check_latte_kind(kind, init_from)
    allowed = FAMILY_KINDS.get(family)
    if allowed is None:
        raise ConfigError(f"unknown family {family!r}; choose one of tiny, latte, {', '.join(FAMILY_KINDS)}.")
    if kind not in allowed:
        raise ConfigError(f"--kind {kind} is not available for --family {family}: allowed {', '.join(allowed)} "
                          f"(the pack samples {family} models as SNR-aligned bridges, the released recipe). "
                          f"Use --kind saf, or --family tiny / latte for the other kinds.")
    if not init_from:
        raise ConfigError(f"--family {family} fine-tunes a text-to-video diffusion checkpoint: pass --init-from "
                          f"<checkpoint file or diffusers folder>.")


def _seeded(seed: int, build):
    """``build()`` under a fixed global seed (module initialisers draw from it), the caller's RNG state kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _copy_matching(target: nn.Module, source: Mapping[str, torch.Tensor], what: str,
                   adapt: Optional[dict] = None) -> dict:
    """Copy every tensor of ``source`` whose name and shape match ``target``'s; ``adapt`` maps a name to
    a function that turns a mismatched source tensor into the target's shape. Returns a report."""
    own = target.state_dict()
    loaded, adapted, mismatched = [], [], []
    with torch.no_grad():
        for k, v in own.items():
            src = source.get(k)
            if src is None:
                continue
            if tuple(src.shape) == tuple(v.shape):
                v.copy_(src.to(v.dtype))
                loaded.append(k)
            elif adapt and k in adapt:
                v.copy_(adapt[k](src.to(v.dtype), v))
                adapted.append(k)
            else:
                mismatched.append(k)
    unused = [k for k in source if k not in own]
    if len(loaded) + len(adapted) < max(1, len(own) // 2):
        sample = ", ".join(sorted(source)[:4])
        raise CheckpointError(f"the diffusion checkpoint fills only {len(loaded) + len(adapted)} of the {len(own)} "
                              f"tensors of the {what} (first keys of the file: {sample}). Pass the text-to-video "
                              f"checkpoint of this family, or --family-config with the network it was trained as.")
    return {"loaded": len(loaded), "adapted": adapted, "kept_init": [k for k in own if k not in loaded
                                                                      and k not in adapted],
            "mismatched": mismatched, "unused": unused}


def _strip_unet(sd: Mapping[str, torch.Tensor]) -> dict:
    for p in ("model.diffusion_model.", "diffusion_model.", ""):
        if f"{p}input_blocks.0.0.weight" in sd and f"{p}time_embed.0.weight" in sd:
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    raise CheckpointError("no VideoCrafter UNet in the --init-from checkpoint: expected keys like "
                          "'model.diffusion_model.input_blocks.0.0.weight' and 'model.diffusion_model.time_embed.0.weight'.")


def videocrafter_config_from(unet_sd: Mapping[str, torch.Tensor], family_config: Optional[dict]):
    """The bridge network: ``family_config`` (a :class:`VideoCrafterConfig` dict) or the diffusion UNet's
    architecture with the bridge's input width, image cross-attention, frame stride and the released Resampler."""
    from ..families.videocrafter.bridge import VideoCrafterConfig
    from ..families.videocrafter.checkpoint import infer_unet_config
    from ..families.videocrafter.resampler import ResamplerConfig
    from ..families.videocrafter.unet3d import UNet3DConfig

    if family_config:
        return VideoCrafterConfig.from_dict(family_config)
    u = infer_unet_config(unet_sd).to_dict()
    u.update(in_channels=2 * u["out_channels"], image_cross_attention=True,
             image_cross_attention_scale_learnable=True, fs_condition=True)
    unet = UNet3DConfig.from_dict(u)
    res = ResamplerConfig(output_dim=unet.context_dim, video_length=unet.temporal_length,
                          num_queries=unet.image_tokens_per_frame)
    return VideoCrafterConfig(unet=unet, resampler=res)


def cogvideox_config_from(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                          family_config: Optional[dict]):
    """``family_config``, else the diffusion transformer's ``config.json`` or weights with 2 × its input channels."""
    from ..families.cogvideox.network import CogVideoXConfig

    if family_config:
        return CogVideoXConfig.from_dict(family_config)
    stored = dict(json.loads(metadata["config"])) if "config" in metadata else {}
    proj = sd["patch_embed.proj.weight"]
    inner, patch = int(proj.shape[0]), int(proj.shape[2])
    head_dim = int(sd["transformer_blocks.0.attn1.norm_q.weight"].shape[0])
    out_ch = int(sd["proj_out.weight"].shape[0]) // (patch * patch)
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks."))
    seen = dict(num_attention_heads=inner // head_dim, attention_head_dim=head_dim, in_channels=2 * out_ch,
                out_channels=out_ch, patch_size=patch, num_layers=layers,
                text_embed_dim=int(sd["patch_embed.text_proj.weight"].shape[1]),
                time_embed_dim=int(sd["time_embedding.linear_1.weight"].shape[0]))
    return CogVideoXConfig.from_dict({**stored, **seen})


class _VideoCrafterTrainNet(nn.Module):
    """Context (text + Resampler tokens) and UNet in one forward, so DDP/FSDP see every parameter used."""

    def __init__(self, bridge):
        super().__init__()
        self.bridge = bridge

    def forward(self, z, t_tilde, cond_latent, text, image, fs):
        return self.bridge(z, t_tilde, cond_latent, self.bridge.context(text, image), fs)


class _CogVideoXTrainNet(nn.Module):
    def __init__(self, bridge):
        super().__init__()
        self.bridge = bridge

    def forward(self, z, t_tilde, cond_latent, text):
        return self.bridge(z, t_tilde, cond_latent, text)


def _read_family_config(path: str) -> Optional[dict]:
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--family-config {path!r} is not a file; pass a JSON file with the network config "
                          f"(VideoCrafterConfig.to_dict() / a diffusers transformer config.json).")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"--family-config {path!r} is not valid JSON ({e}); fix the file.") from e


class FamilyTask:
    """A SAF fine-tune of a VideoCrafter or CogVideoX bridge (see the module docstring); the task
    interface of :class:`framebridge_core.training.loop.TinyTask`."""

    def __init__(self, cfg, dataset):
        from ..bridge.schedule import BridgeSchedule

        check_family_kind(cfg.family, cfg.kind, cfg.init_from)
        self.cfg, self.dataset, self.family = cfg, dataset, cfg.family
        sd, meta = load_state_dict(cfg.init_from)      # safetensors, or a torch file read with weights_only=True
        fam_cfg = _read_family_config(cfg.family_config)
        self.schedule = BridgeSchedule()
        if self.family == "videocrafter":
            from ..families.videocrafter.bridge import VideoCrafterBridge

            unet_sd = _strip_unet(sd)
            self.config = videocrafter_config_from(unet_sd, fam_cfg)
            self.inner = _seeded(cfg.seed, lambda: self._official_new_module_init(
                VideoCrafterBridge(self.config, schedule=self.schedule)))
            self.report = _copy_matching(self.inner.diffusion_model, unet_sd, "VideoCrafter UNet")
            self.net = _VideoCrafterTrainNet(self.inner)
            self.layout = "BCTHW"
        else:
            from ..families.cogvideox.bridge import CogVideoXBridge
            from ..families.cogvideox.checkpoint import from_native_keys

            sd = from_native_keys(sd)
            if "patch_embed.proj.weight" not in sd:
                raise CheckpointError("no CogVideoX transformer in the --init-from checkpoint: expected diffusers keys "
                                      "like 'patch_embed.proj.weight' (the CogVideoX-2b transformer/ folder).")
            self.config = cogvideox_config_from(sd, meta, fam_cfg)
            self.inner = _seeded(cfg.seed, lambda: CogVideoXBridge(self.config, schedule=self.schedule))

            def widen(src, dst):  # the image-latent channels start at zero
                out = torch.zeros_like(dst)
                out[:, :src.shape[1]] = src
                return out

            self.report = _copy_matching(self.inner.transformer, sd, "CogVideoX transformer",
                                         adapt={"patch_embed.proj.weight": widen})
            self.net = _CogVideoXTrainNet(self.inner)
            self.layout = "BFCHW"
        self.table = self.inner.aligned_t.float()

    @staticmethod
    def _official_new_module_init(bridge):
        """Zero the last layer of the frame-stride MLP (official ``openaimodel3d.py``); the image-attention
        gates ``alpha`` start at zero already. The Resampler's queries are allocated uninitialised (a loaded
        checkpoint fills them): draw them as the official ``resampler.py:118`` does, ``randn / √dim``, from
        the seeded global generator :func:`_seeded` set up (uninitialised memory gave NaN losses at random)."""
        with torch.no_grad():
            fps = getattr(bridge.diffusion_model, "fps_embedding", None)
            if fps is not None:
                for p in fps[2].parameters():
                    p.zero_()
            proj = getattr(bridge, "image_proj_model", None)
            if proj is not None:
                proj.latents.copy_(torch.randn(proj.latents.shape) / proj.latents.shape[-1] ** 0.5)
        return bridge

    # -- the task interface ------------------------------------------------------------------------
    def to(self, device: torch.device) -> None:
        self.net.to(device)

    def blocks(self) -> list:
        if self.family == "videocrafter":
            unet = self.inner.diffusion_model
            return [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
        return list(self.inner.transformer.transformer_blocks)

    def draw(self, n: int, data_gen: torch.Generator, noise_gen: torch.Generator):
        """Rows of one global batch and, per row, an index, a noise seed and a text-dropout flag: the noise
        of row k depends on its seed only, so every world size computes the same batch."""
        rows = self.dataset.draw_plan(n, data_gen)
        t = torch.randint(0, 1000, (n,), generator=noise_gen)
        seeds = torch.randint(0, 2 ** 62, (n,), generator=noise_gen)
        drop = torch.rand((n,), generator=noise_gen) < self.cfg.class_dropout
        return rows, t, seeds, drop

    def loss(self, model, plan, lo: int, hi: int, device: torch.device) -> torch.Tensor:
        rows, t_all, seeds, drop = plan
        batch = self.dataset.render_plan(rows, lo, hi)
        if "latent" not in batch:
            raise ConfigError(f"--family {self.family} trains on precomputed latents: the data rows need a 'latents' "
                              f"file (a .safetensors with 'latent' and 'text'; see training/data/video_folder.py).")
        x0 = batch["latent"].float()
        t = t_all[lo:hi]
        noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(int(s)))
                             for s in seeds[lo:hi]])
        text = batch["text"].float()
        null = getattr(self.dataset, "null_text", None)
        if null is not None and bool(drop[lo:hi].any()):
            text = torch.where(drop[lo:hi].view(-1, 1, 1), null.float().expand_as(text), text)
        x0, noise, text, t = x0.to(device), noise.to(device), text.to(device), t.to(device)
        if "prior" in batch:
            y = batch["prior"].float().to(device)
        elif self.layout == "BCTHW":
            y = x0[:, :, :1].expand_as(x0)
        else:
            y = x0[:, :1].expand_as(x0)
        if y.shape != x0.shape:
            raise ShapeError(f"prior {tuple(y.shape)} and latent {tuple(x0.shape)} must have the same shape.")
        # a [B, C, T, H, W] state is batch-first as the schedule's gather needs, like [B, F, C, H, W]
        x_t = self.schedule.add_noise(x0, y, t, noise)
        if self.cfg.kind == "saf":
            z, t_tilde = aligned_input(x_t, y, t, self.schedule), self.table.to(device)[t]
        else:  # plain-finetune: the raw state at the bridge index, the ablation without SNR alignment
            z, t_tilde = x_t, t.float()
        if self.family == "videocrafter":
            image = batch.get("image")
            if image is None:
                raise ConfigError("--family videocrafter needs the CLIP image tokens of each clip's first frame: "
                                  "an 'image' tensor [257, 1280] in each latents file.")
            fs = batch.get("fs")
            out = model(z, t_tilde, y, text, image.float().to(device), None if fs is None else fs.to(device))
            target = (x_t - x0) / gather(self.schedule.sigma, t, x0)
        else:
            out = model(z, t_tilde, y, text)
            target = training_target("v_aligned", x0, y, noise, t, self.schedule)
        return F.mse_loss(out.float(), target.float())

    def export(self, weights: dict, step: int, seconds: float, path: Path, global_batch: int) -> Path:
        """The EMA weights in the layout the family's loader detects, with ``framebridge.*`` metadata."""
        from safetensors.torch import save_file

        cfg = self.cfg
        dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[cfg.export_dtype]
        meta = {META + "family": self.family, META + "variant": cfg.kind, META + "steps": str(step),
                META + "batch": str(global_batch), META + "train_minutes": f"{seconds / 60:.1f}",
                META + "date": _dt.date.today().isoformat(), META + "seed": str(cfg.seed),
                META + "init_from": Path(cfg.init_from).name, META + "data": getattr(self.dataset, "description", "")}
        if self.family == "videocrafter":
            from ..families.videocrafter.checkpoint import META_RESAMPLER_HEADS

            tensors = {("model." + k if k.startswith("diffusion_model.") else k): v for k, v in weights.items()}
            meta[META + "predicts"] = "eps_psi"
            meta[META + "timestep"] = ("saf_t_tilde (SD scaled-linear)" if cfg.kind == "saf"
                                       else "bridge_index (raw x_t, no SNR alignment)")
            if self.config.resampler is not None:
                meta[META_RESAMPLER_HEADS] = str(self.config.resampler.heads)
            meta[META + "config"] = json.dumps(self.config.to_dict())
        else:
            tensors = {k[len("transformer."):]: v for k, v in weights.items() if k.startswith("transformer.")}
            meta[META + "predicts"] = "v_aligned"
            meta[META + "timestep"] = ("saf_t_tilde (CogVideoX-2B)" if cfg.kind == "saf"
                                       else "bridge_index (raw x_t, no SNR alignment)")
            meta["config"] = json.dumps({"_class_name": "CogVideoXTransformer3DModel", **self.config.to_dict()})
        tensors = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
        save_file(tensors, str(path), metadata={k: v for k, v in meta.items() if v})
        return path


__all__ = ["FAMILY_KINDS", "FamilyTask", "check_family_kind", "cogvideox_config_from", "videocrafter_config_from"]
