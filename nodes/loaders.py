"""Load FrameBridge (a bridge network as MODEL), Load Neural Prior (FB_PRIOR_NET), Load FrameBridge
Checkpoint (the all-in-one VideoCrafter file: MODEL, CLIP, VAE, CLIP_VISION) and Load CogVideoX VAE."""

from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

import comfy.model_management as mm
import comfy.model_patcher

from ..framebridge_core.checkpoints import load_state_dict, load_weights_strict, normalize_state_dict
from ..framebridge_core.families.cogvideox.checkpoint import COGVIDEOX
from ..framebridge_core.families.latte.checkpoint import LATTE_BRIDGE, LATTE_NEURAL_PRIOR
from ..framebridge_core.errors import CheckpointError
from ..framebridge_core.families.latte.frames import LatteNeuralPriorFrames
from ..framebridge_core.families.videocrafter.checkpoint import VIDEOCRAFTER, split_checkpoint
from .common import CheckedNode, WEIGHT_DTYPES, check_choice, comfy_attention, identify, wrong_loader
from .families.bridge import latent_space_of
from .families.cogvideox import build_cogvideox_patcher, load_cogvideox_vae
from .families.latte import build_latte_patcher
from .families.videocrafter import build_videocrafter_patcher, load_videocrafter
from .paths import file_fingerprint, full_path, model_files, model_fingerprint

CATEGORY = "FrameBridge/loaders"

PriorNet = io.Custom("FB_PRIOR_NET")


@dataclass
class NeuralPriorNet:
    """A loaded neural prior network: a ModelPatcher (so ComfyUI manages its memory) + config."""

    patcher: comfy.model_patcher.ModelPatcher
    config: object
    source: str
    latent_space: str = "sd-vae"


def _read(ckpt_name: str, node: str):
    path = full_path(ckpt_name)
    sd, meta = load_state_dict(path)
    info = identify(ckpt_name, sd, meta, node)
    sd, _, _ = normalize_state_dict(sd)
    return path, sd, info, meta


#: variants this project trains for its benchmark that are not FrameBridge models in ComfyUI
_NOT_LOADABLE = {
    "diffusion": "a noise-to-video diffusion baseline",
    "saf": "an SNR-aligned fine-tune (v-prediction on aligned inputs)",
    "plain-finetune": "a fine-tune without SNR alignment",
}


class LoadFrameBridge(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FB_LoadFrameBridge",
            display_name="Load FrameBridge",
            category=CATEGORY,
            description=(
                "Loads a FrameBridge image-to-video bridge model from models/framebridge (or any folder "
                "named 'framebridge' in extra_model_paths.yaml). The model family and size are read from "
                "the weights, not the file name. Supported: FrameBridge-Latte (UCF-101, with or without "
                "neural prior), the bundled tiny camera-motion models (pixel space: use the 'pixel_space' VAE), "
                "FrameBridge-VideoCrafter (UNet file) and FrameBridge-CogVideoX-2B (the released transformer/ folder, "
                "listed as '<folder>/', or one .safetensors of its keys). Neural prior files go in 'Load Neural Prior'."
            ),
            inputs=[
                io.Combo.Input("ckpt_name", options=model_files(),
                               tooltip="Weights in models/framebridge: the official {\"ema\": ...} .pt, a .safetensors, "
                                       "or a diffusers model folder (config.json + shards) shown as '<folder>/'."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="Precision of the weights. 'default' lets ComfyUI choose for your device "
                                       "(the official Latte model ran in fp32; FrameBridge-CogVideoX in bf16: "
                                       "fp16/bf16 halve its 6.8 GB of fp32 weights)."),
            ],
            outputs=[io.Model.Output(tooltip="The bridge network as a ComfyUI MODEL: use it with Bridge Sampler "
                                             "or a CFGGuider + Bridge SAMPLER in SamplerCustomAdvanced.")],
        )

    @classmethod
    def fingerprint_inputs(cls, ckpt_name, weight_dtype):
        return model_fingerprint(ckpt_name), weight_dtype

    @classmethod
    def execute(cls, ckpt_name, weight_dtype) -> io.NodeOutput:
        check_choice(weight_dtype, WEIGHT_DTYPES, "Load FrameBridge", "weight_dtype")
        path, sd, info, meta = _read(ckpt_name, "Load FrameBridge")
        variant = meta.get("framebridge.variant", "bridge")
        if variant in _NOT_LOADABLE:
            raise CheckpointError(
                f"'{ckpt_name}' is {_NOT_LOADABLE[variant]} from the quality benchmark, not an eps_psi "
                f"FrameBridge model; use it with `python -m framebridge_core bench quality`, and load a "
                f"bridge model (variant 'bridge' or 'bridge-np') here.")
        if info.name == LATTE_NEURAL_PRIOR:
            raise CheckpointError(
                f"'{ckpt_name}' is a FrameBridge neural prior network, not a bridge model: load it with "
                f"'Load Neural Prior' and connect it to the 'Neural Prior' node."
            )
        if info.name == VIDEOCRAFTER:
            return io.NodeOutput(build_videocrafter_patcher(info.config, split_checkpoint(sd),
                                                            WEIGHT_DTYPES[weight_dtype]))
        if info.name == COGVIDEOX:
            return io.NodeOutput(build_cogvideox_patcher(info.config, sd, WEIGHT_DTYPES[weight_dtype]))
        if info.name != LATTE_BRIDGE:
            raise wrong_loader(ckpt_name, info.name, "Load FrameBridge",
                               "FrameBridge-Latte, -VideoCrafter and -CogVideoX bridge models")
        return io.NodeOutput(build_latte_patcher(info.config, sd, WEIGHT_DTYPES[weight_dtype], meta))


class LoadNeuralPrior(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FB_LoadNeuralPrior",
            display_name="Load Neural Prior",
            category=CATEGORY,
            description=(
                "Loads a FrameBridge neural prior network (the official 'nwarp' model) from "
                "models/framebridge. It predicts a coarse video from the image in one pass; FrameBridge "
                "models trained with it then bridge from that coarse video instead of the still image."
            ),
            inputs=[
                io.Combo.Input("ckpt_name", options=model_files(),
                               tooltip="Neural prior weights (keys 'nwarp_model.*' in the official .pt)."),
            ],
            outputs=[PriorNet.Output(display_name="prior_net", tooltip="Connect to 'Neural Prior'.")],
        )

    @classmethod
    def fingerprint_inputs(cls, ckpt_name):
        return model_fingerprint(ckpt_name)

    @classmethod
    def execute(cls, ckpt_name) -> io.NodeOutput:
        path, sd, info, meta = _read(ckpt_name, "Load Neural Prior")
        if info.name != LATTE_NEURAL_PRIOR:
            raise wrong_loader(ckpt_name, info.name, "Load Neural Prior", "FrameBridge neural prior networks")
        net = LatteNeuralPriorFrames(info.config, attention=comfy_attention)
        load_weights_strict(net.net.nwarp_model, sd, "FrameBridge-Latte neural prior network")
        net.eval()
        patcher = comfy.model_patcher.ModelPatcher(net, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        return io.NodeOutput(NeuralPriorNet(patcher=patcher, config=info.config, source=path,
                                            latent_space=latent_space_of(meta)))


class LoadFrameBridgeCheckpoint(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FB_LoadFrameBridgeCheckpoint",
            display_name="Load FrameBridge Checkpoint",
            category=CATEGORY,
            description=(
                "Loads an all-in-one FrameBridge checkpoint (the released FrameBridge-VideoCrafter Lightning .ckpt) "
                "from models/framebridge: the bridge model as MODEL, and the text encoder, VAE and image encoder it "
                "holds as ComfyUI's own CLIP (OpenCLIP ViT-H, penultimate layer), VAE (SD VAE) and CLIP_VISION (ViT-H)."
            ),
            inputs=[
                io.Combo.Input("ckpt_name", options=model_files(),
                               tooltip="The FrameBridge-VideoCrafter .ckpt (Lightning checkpoint with state_dict)."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="Precision of the bridge network. 'default' lets ComfyUI choose (the official "
                                       "sampler ran fp16 autocast)."),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output(), io.ClipVision.Output()],
        )

    @classmethod
    def fingerprint_inputs(cls, ckpt_name, weight_dtype):
        return model_fingerprint(ckpt_name), weight_dtype

    @classmethod
    def execute(cls, ckpt_name, weight_dtype) -> io.NodeOutput:
        check_choice(weight_dtype, WEIGHT_DTYPES, "Load FrameBridge Checkpoint", "weight_dtype")
        model, clip, vae, clip_vision = load_videocrafter(full_path(ckpt_name), WEIGHT_DTYPES[weight_dtype])
        missing = [n for n, v in (("CLIP (cond_stage_model.*)", clip), ("VAE (first_stage_model.*)", vae),
                                  ("CLIP_VISION (embedder.*)", clip_vision)) if v is None]
        if missing:
            raise CheckpointError(
                f"'{ckpt_name}' holds the bridge network but not {', '.join(missing)}; load the full released "
                f"checkpoint, or load this file with 'Load FrameBridge' and the encoders with the core CLIP Loader "
                f"(type stable_diffusion), Load VAE and Load CLIP Vision nodes.")
        return io.NodeOutput(model, clip, vae, clip_vision)


class LoadCogVideoXVAE(CheckedNode):
    @classmethod
    def define_schema(cls):
        import folder_paths

        return io.Schema(
            node_id="FB_LoadCogVideoXVAE",
            display_name="Load CogVideoX VAE",
            category=CATEGORY,
            description=(
                "Loads the CogVideoX 3-D causal VAE (the vae/ weights of CogVideoX-2B, e.g. renamed "
                "cogvideox_2b_vae.safetensors) from models/vae as a VAE for core VAE Encode / VAE Decode and "
                "'Bridge Prior from Image'. An IMAGE batch of 4k+1 frames is one video. ComfyUI 0.3.64's own "
                "Load VAE cannot read this file."
            ),
            inputs=[
                io.Combo.Input("vae_name", options=folder_paths.get_filename_list("vae"),
                               tooltip="diffusion_pytorch_model.safetensors of CogVideoX-2b/vae, in models/vae."),
                io.Boolean.Input("tiled", default=True,
                                 tooltip="Encode and decode in overlapping tiles exactly as the official pipeline "
                                         "(diffusers enable_tiling; it tiles from 256 px up). Needed for official "
                                         "results and lets 256x256x17 decode in under 8 GB of VRAM; off = untiled."),
                io.Combo.Input("dtype", options=["default", "fp32", "bf16", "fp16"], default="default",
                               tooltip="VAE precision. 'default' lets ComfyUI choose (bf16 on most GPUs)."),
            ],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def fingerprint_inputs(cls, vae_name, tiled, dtype):
        return file_fingerprint("vae", vae_name), tiled, dtype

    @classmethod
    def execute(cls, vae_name, tiled, dtype) -> io.NodeOutput:
        import folder_paths

        check_choice(dtype, ("default", "fp32", "bf16", "fp16"), "Load CogVideoX VAE", "dtype")
        path = folder_paths.get_full_path_or_raise("vae", vae_name)
        return io.NodeOutput(load_cogvideox_vae(path, tiled=tiled, dtype=WEIGHT_DTYPES[dtype]))
