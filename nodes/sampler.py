"""Bridge sampling inside ComfyUI's own sampling stack.

``BridgeSampler`` is a ``comfy.samplers.Sampler`` driven by a ``CFGGuider``: conditioning, CFG,
LoRA, hooks and model patches flow through ComfyUI's model call; the update rule is
``framebridge_core.sampling``. The all-in-one node and the SAMPLER + SIGMAS pair run the same
code and give identical results for the same seed.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.samplers
import comfy.utils

from .common import CheckedNode, check_choice, check_number
from ..framebridge_core.bridge.schedule import SPACINGS
from ..framebridge_core.errors import ConfigError, ShapeError
from ..framebridge_core.families.frames import PRIOR_KEY
from ..framebridge_core.bridge.sampling import METHODS, sample_bridge
from .prior import require_bridge_model
from .previews import video_preview_callback

CATEGORY = "FrameBridge/sampling"
_SEED_MIX = 0x9E3779B97F4A7C15


def step_noise_generator(seed: int) -> torch.Generator:
    """CPU generator for the noise of steps after the first (seed-derived, device independent)."""
    return torch.Generator("cpu").manual_seed((int(seed) * _SEED_MIX + 1) % (2**63))


class BridgeSampler(comfy.samplers.Sampler):
    """First-order bridge sampler (SDE, ODE or mixed) for FrameBridge MODELs.

    The latent image is the prior: sampling starts there with no noise. The ``noise`` tensor the
    guider passes in is used by the first step; later steps draw from a seed-derived CPU
    generator, so results do not depend on the device.
    """

    def __init__(self, method: str = "sde", eta: float = 0.5):
        if method not in METHODS:
            raise ConfigError(f"unknown bridge method {method!r}; choose one of {', '.join(METHODS)}.")
        self.method = method
        self.eta = float(eta)

    # No autograd: ComfyUI runs nodes under inference mode, but a direct call (a script, a test) would
    # otherwise chain every step's graph to the next and keep all activations (a 3-step stand-in
    # VideoCrafter run grew from 1.2 to 7.3 GB).
    @torch.no_grad()
    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        ms = model_wrap.inner_model.model_sampling
        schedule = getattr(ms, "schedule", None)
        if schedule is None:
            raise ConfigError(
                "the Bridge sampler needs a FrameBridge MODEL from 'Load FrameBridge' (a ModelSampling node "
                "after the loader would also replace the bridge schedule: remove it)."
            )
        if latent_image is None:
            raise ConfigError("the Bridge sampler needs the prior as latent_image.")
        positive = sigmas[sigmas > 0]
        if positive.numel() == 0:
            raise ConfigError("the SIGMAS are empty; use 'Bridge Schedule' to make them.")
        grid = schedule.nearest_index(positive.cpu()).tolist()
        table = ms.sigmas.to(latent_image.device)
        prior = latent_image
        extra_args["model_options"].setdefault("transformer_options", {})[PRIOR_KEY] = prior
        seed = extra_args.get("seed") or 0
        gen = step_noise_generator(seed)
        s_in = prior.new_ones(prior.shape[0])

        def denoise(x, i, y):
            return model_wrap(x, table[i] * s_in, **extra_args)

        def step_noise(k, like):
            if k == 0 and noise is not None and noise.shape == like.shape:
                return noise
            return torch.randn(like.shape, generator=gen, dtype=torch.float32).to(like)

        def report(info):
            mm.throw_exception_if_processing_interrupted()
            if callback is not None:
                callback(info["step"], info["denoised"], info["x"], info["total"])

        return sample_bridge(denoise, prior, schedule, grid, method=self.method, eta=self.eta,
                             callback=report, noise=step_noise)


def bridge_sigmas(model, steps: int, spacing: str) -> torch.Tensor:
    """Descending bridge σ at the grid indices, with the closing 0 ComfyUI's SIGMAS carry."""
    info = require_bridge_model(model, "Bridge Schedule")
    steps, spacing, _ = resolve_settings(info, steps, spacing)
    grid = info.schedule.timesteps(steps, spacing)
    sig = info.schedule.sigma[grid].float()
    return torch.cat([sig, sig.new_zeros(1)])


def _check_prior(info, samples: torch.Tensor) -> None:
    if info.family == "cogvideox":  # one 3-D VAE latent per video; any 4k+1 length and 16-px multiple size
        if samples.ndim != 5 or samples.shape[1] != info.latent_channels:
            raise ShapeError(
                f"the prior latent has shape {tuple(samples.shape)}, but FrameBridge-CogVideoX samples "
                f"[videos, {info.latent_channels}, frames, h, w] latents; make it with 'Bridge Prior from Image' "
                f"and the CogVideoX VAE.")
        return
    want = (info.latent_channels, info.latent_size, info.latent_size)
    if samples.ndim != 4 or tuple(samples.shape[1:]) != want:
        raise ShapeError(
            f"the prior latent has shape {tuple(samples.shape)}, but this FrameBridge model samples "
            f"[frames, {want[0]}, {want[1]}, {want[2]}] latents; make it with 'Bridge Prior from Image'."
        )
    if samples.shape[0] % info.num_frames:
        raise ShapeError(
            f"the prior has {samples.shape[0]} frames, not a multiple of the model's {info.num_frames}; "
            f"make it with 'Bridge Prior from Image' (length={info.num_frames})."
        )


def _check_neural_prior(info, positive) -> None:
    """The prior's kind (still image / 'Neural Prior') against what the model was trained on, before sampling."""
    flags = [bool(extras["fb_neural_prior"]) for _, extras in positive if "fb_neural_prior" in extras]
    if info.family != "latte" or not flags:
        return
    n = info.latent_channels
    if flags[0] and not info.neural_prior_input:
        raise ConfigError(
            f"Bridge Sampler: the prior came from 'Neural Prior', but this FrameBridge model does not take a neural "
            f"prior ({n} input channels: it bridges from the still image). Remove 'Neural Prior' (connect 'Bridge "
            f"Prior from Image' to the sampler), or load the FrameBridge model trained with the neural prior.")
    if not flags[0] and info.neural_prior_input:
        raise ConfigError(
            f"Bridge Sampler: this FrameBridge model was trained with the neural prior ({2 * n} input channels), but "
            f"the prior is the still image: put 'Neural Prior' (with 'Load Neural Prior') between 'Bridge Prior from "
            f"Image' and the sampler.")


#: widget value meaning "the loaded model's own default" (stored in the MODEL by its loader)
AUTO = "auto"
_DEFAULTS_TEXT = ("auto = the model's own default: FrameBridge-Latte (UCF-101) 50 steps, iddpm, CFG 7; "
                  "VideoCrafter 50, trailing, CFG 7.5; CogVideoX 50, trailing, CFG 6; the bundled tiny models "
                  "25, trailing, CFG 2 (read from the file). Every family's official method is sde.")


def family_defaults(info) -> dict:
    """The loaded model's own sampling settings (what 'auto' means)."""
    return {"steps": info.default_steps, "spacing": info.default_spacing, "cfg": info.default_cfg, "method": "sde"}


def resolve_settings(info, steps: int, spacing: str, cfg: float | None = None) -> tuple[int, str, float | None]:
    """``steps`` 0, ``spacing`` 'auto' and ``cfg`` 0 become the model's defaults; other values are kept."""
    d = family_defaults(info)
    return (int(steps) or d["steps"], d["spacing"] if spacing == AUTO else spacing,
            None if cfg is None else (float(cfg) if cfg > 0 else d["cfg"]))


def _method_inputs():
    return [
        io.Combo.Input("method", options=[AUTO, *METHODS], default=AUTO,
                       tooltip="sde: the official first-order bridge SDE (what 'auto' uses, for every family). "
                               "ode: deterministic after the first step. mixed: injects a fraction eta of the SDE noise."),
        io.Float.Input("eta", default=0.5, min=0.0, max=1.0, step=0.05,
                       tooltip="Noise fraction for 'mixed' (1 = sde, 0 = ode); ignored otherwise."),
    ]


def _method(method: str, node: str = "Bridge SAMPLER", eta: float = 0.5) -> str:
    check_choice(method, (AUTO, *METHODS), node, "method")
    check_number(eta, node, "eta", 0.0, 1.0)
    return "sde" if method == AUTO else method


MAX_STEPS = 1000


def _check_schedule(node: str, steps, spacing) -> None:
    check_number(steps, node, "steps", 0, MAX_STEPS)
    check_choice(spacing, (AUTO, *SPACINGS), node, "spacing")


def _schedule_inputs():
    return [
        io.Int.Input("steps", default=0, min=0, max=MAX_STEPS,
                     tooltip="Network evaluations (x2 with cfg != 1); 0 = " + _DEFAULTS_TEXT + " The official Latte "
                             "sampler used 1000 (250 in early configs): much slower for a small gain."),
        io.Combo.Input("spacing", options=[AUTO, *SPACINGS], default=AUTO,
                       tooltip="Which bridge indices to visit: iddpm (official Latte, includes index 0), "
                               "trailing (official VideoCrafter/CogVideoX, starts at 999), uniform "
                               "(VideoCrafter's default; starts far from the prior: not recommended). " + _DEFAULTS_TEXT),
    ]


class BridgeSamplerNode(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FB_BridgeSampler",
            display_name="Bridge Sampler",
            category=CATEGORY,
            description=(
                "Samples a video with a FrameBridge model, starting from the prior (not from noise). "
                "Identical to SamplerCustomAdvanced with CFGGuider + 'Bridge SAMPLER' + 'Bridge Schedule'."
            ),
            inputs=[
                io.Model.Input("model", tooltip="From 'Load FrameBridge'."),
                io.Conditioning.Input("positive", tooltip="From 'Bridge Prior from Image' (or 'Neural Prior')."),
                io.Conditioning.Input("negative", tooltip="Unconditional branch (null class)."),
                io.Latent.Input("prior", tooltip="The bridge prior: where sampling starts."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the noise the SDE steps inject; the same seed gives the same video on any device."),
                *_schedule_inputs(),
                io.Float.Input("cfg", default=0.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance (on the class label, or on the text for VideoCrafter "
                                       "and CogVideoX). 1 disables it and halves the cost; 0 = " + _DEFAULTS_TEXT),
                *_method_inputs(),
            ],
            outputs=[io.Latent.Output(tooltip="The video latent, frames-as-batch: decode with VAE Decode.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, prior, seed, steps, spacing, cfg, method, eta) -> io.NodeOutput:
        node = "Bridge Sampler"
        _check_schedule(node, steps, spacing)
        check_number(cfg, node, "cfg", 0.0, 30.0)
        method = _method(method, node, eta)
        info = require_bridge_model(model, node)
        samples = prior["samples"]
        _check_prior(info, samples)
        _check_neural_prior(info, positive)
        noise = torch.randn(samples.shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=samples.dtype)
        steps, spacing, cfg = resolve_settings(info, steps, spacing, cfg)
        sigmas = bridge_sigmas(model, steps, spacing)
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        callback = video_preview_callback(model, sigmas.shape[-1] - 1)  # a strip of frames, not frame 0 only
        out = guider.sample(noise, samples, BridgeSampler(method, eta), sigmas, denoise_mask=None, callback=callback,
                            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        out = out.to(mm.intermediate_device())
        return io.NodeOutput({"samples": out})


class BridgeSamplerSelect(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FB_BridgeSamplerSelect",
            display_name="Bridge SAMPLER",
            category=CATEGORY,
            description="The bridge sampler as a SAMPLER for SamplerCustomAdvanced; give it the prior as latent_image.",
            inputs=_method_inputs(),
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, method, eta) -> io.NodeOutput:
        return io.NodeOutput(BridgeSampler(_method(method, "Bridge SAMPLER", eta), eta))


class BridgeScheduleNode(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FB_BridgeSchedule",
            display_name="Bridge Schedule",
            category=CATEGORY,
            description="The bridge time grid as SIGMAS (bridge σ at the visited indices, then 0) for SamplerCustomAdvanced.",
            inputs=[io.Model.Input("model", tooltip="From 'Load FrameBridge'."), *_schedule_inputs()],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, model, steps, spacing) -> io.NodeOutput:
        _check_schedule("Bridge Schedule", steps, spacing)
        return io.NodeOutput(bridge_sigmas(model, steps, spacing))
