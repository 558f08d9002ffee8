"""Prompt2Prompt for SD-1.5 (BIVDiff's Prompt2Prompt image model) as a patched core MODEL.

One sampler run makes both images: the batch is laid out in pairs ``[source_0, edited_0, source_1, ...]``
(the official per-frame batch is one pair). The node returns

* the MODEL with every SpatialTransformer's self- and cross-attention replaced by one that computes the
  softmax maps and edits the conditional pairs (``framebridge_core.bivdiff.prompt2prompt``), plus a
  post-CFG hook for the local blend;
* a CONDITIONING with two entries (source, target) that ComfyUI repeats over the pairs;
* the LATENT with every frame doubled and ``batch_index`` pairs, so a KSampler that adds noise gives both
  members of a pair the same noise.

The sampling step comes from the sampler's sigma schedule (``transformer_options["sample_sigmas"]``), so
core KSampler, KSamplerAdvanced and SamplerCustom(Advanced) all drive it.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management as mm
from comfy.ldm.modules.attention import SpatialTransformer, optimized_attention

from ..framebridge_core.bivdiff import prompt2prompt as p2p
from ..framebridge_core.errors import ConfigError, ShapeError
from .common import CheckedNode, check_choice, check_number

CATEGORY = "FrameBridge/BIVDiff"
NODE = "Prompt2Prompt"


# ---- tokens -----------------------------------------------------------------------------------------


def _single_window(clip, text: str, what: str) -> list:
    """The (token, weight, word id) list of one CLIP window; prompt weights are off (``(word:1.2)`` is text),
    as the official pipeline tokenizes the plain prompt."""
    tokens = clip.tokenize(text, return_word_ids=True, disable_weights=True)
    if len(tokens) != 1:
        raise ConfigError(f"{NODE}: the CLIP has text encoders {sorted(tokens)}; Prompt2Prompt edits SD-1.5, "
                          "whose CLIP has one (CLIP-L). Use the SD-1.5 checkpoint's CLIP.")
    windows = next(iter(tokens.values()))
    if len(windows) > 1:
        raise ConfigError(f"{NODE}: the {what} ({text[:60]!r}...) needs {len(windows)} CLIP windows of "
                          f"{p2p.MAX_TOKENS} tokens; Prompt2Prompt aligns one window: shorten it to at most "
                          f"{p2p.MAX_TOKENS - 2} tokens.")
    return windows[0]


def _body(window: list) -> list[int]:
    return [int(t) for t, _, word in window if word != 0]


def prompt_tokens(clip, text: str, what: str) -> p2p.PromptTokens:
    """``PromptTokens`` from the user's CLIP tokenizer: ids with start / end token and, per space-separated
    word, its token count (each word tokenized alone, which CLIP's pre-tokenizer makes equal to the whole)."""
    if not text.strip():
        raise ConfigError(f"{NODE}: the {what} is empty; write the prompt the edit starts from / aims at.")
    window = _single_window(clip, text, what)
    body = _body(window)
    ids = (int(window[0][0]), *body, int(window[len(body) + 1][0]))
    counts = tuple(len(_body(_single_window(clip, w, what))) if w else 0 for w in text.split(" "))
    if sum(counts) != len(body):
        raise ConfigError(f"{NODE}: the {what} {text!r} tokenizes to {len(body)} tokens but its words one by one to "
                          f"{sum(counts)}; separate words with single spaces (no tabs or line breaks).")
    return p2p.PromptTokens(text, ids, counts)


def _positions(tokens: p2p.PromptTokens, words: str, what: str) -> list[int]:
    out = []
    for word in words.split():
        found = tokens.word_positions(word)
        if not found:
            raise ConfigError(f"{NODE}: {what} word {word!r} is not a word of the prompt {tokens.text!r} (words are "
                              f"matched exactly, split at spaces: {tokens.words}).")
        out.extend(found)
    return sorted(set(out))


# ---- the attention patch ----------------------------------------------------------------------------


def _heads_view(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, inner = t.shape
    return t.reshape(b, n, heads, inner // heads).permute(0, 2, 1, 3).reshape(b * heads, n, inner // heads)


class Prompt2PromptPatch:
    """The attention replacement and local-blend hook that ``FB_Prompt2Prompt`` installs."""

    def __init__(self, source, target, mode, cross_replace_steps, self_replace_steps, selector, reweight):
        self.source, self.target, self.mode = source, target, mode
        self.cross, self.self_ = cross_replace_steps, self_replace_steps
        self.selector, self.reweight = selector, reweight
        self._plans: dict[int, p2p.EditPlan] = {}
        self._maps: dict[int, list] = {}  # step -> [sum of the blend layers' word maps, layer count]

    def plan(self, num_steps: int) -> p2p.EditPlan:
        if num_steps not in self._plans:
            self._plans[num_steps] = p2p.make_plan(self.source, self.target, self.mode, num_steps, self.cross,
                                                   self.self_, reweight=self.reweight)
        return self._plans[num_steps]

    @staticmethod
    def _step(options: dict, sigma: torch.Tensor) -> tuple[int, int, torch.Tensor]:
        sample_sigmas = options.get("sample_sigmas")
        if sample_sigmas is None:
            raise ConfigError(f"{NODE}: the sampler gave the model no sigma schedule (transformer_options "
                              "'sample_sigmas'), so the edit cannot tell the step; sample with KSampler, "
                              "KSamplerAdvanced or SamplerCustom(Advanced).")
        step = p2p.step_index(sample_sigmas, sigma)
        return step, len(sample_sigmas) - 1, sample_sigmas

    def _attention(self, q, k, v, extra: dict, is_cross: bool):
        mm.throw_exception_if_processing_interrupted()
        heads = extra["n_heads"]
        step, num_steps, _ = self._step(extra, extra["sigmas"])
        plan = self.plan(num_steps)
        blend_layer = is_cross and self.selector is not None and self._is_blend_layer(q.shape[1], extra)
        if not is_cross:
            start, end = plan.self_window
            if not (start <= step < end) or q.shape[1] > p2p.SELF_REPLACE_MAX_QUERIES:
                return optimized_attention(q, k, v, heads, attn_precision=extra.get("attn_precision"))
        elif not blend_layer and not plan.cross_alpha[min(step, num_steps)].any():
            return optimized_attention(q, k, v, heads, attn_precision=extra.get("attn_precision"))
        d = q.shape[-1] // heads
        probs = (_heads_view(q, heads).float() @ _heads_view(k, heads).float().transpose(1, 2) * d ** -0.5).softmax(-1)
        chunks = extra.get("cond_or_uncond") or [0]
        per = probs.shape[0] // len(chunks)
        for c, kind in enumerate(chunks):
            if kind != 0:  # only the conditional branch is edited, as officially
                continue
            rows = slice(c * per, (c + 1) * per)
            probs[rows] = p2p.edit_attention(plan, probs[rows], heads, is_cross, step)
            if blend_layer:
                self._record(step, p2p.blend_word_maps(probs[rows], heads, self.selector, self._hw(extra)))
        b = q.shape[0]
        out = probs @ _heads_view(v, heads).float()
        return out.reshape(b, heads, -1, d).permute(0, 2, 1, 3).reshape(b, -1, heads * d).to(q.dtype)

    def attn1(self, q, k, v, extra):
        return self._attention(q, k, v, extra, False)

    def attn2(self, q, k, v, extra):
        return self._attention(q, k, v, extra, True)

    # local blend: the official maps are the 16x16 cross-attention layers of the down and up blocks of SD-1.5 at
    # 512 px (``down_cross[2:4] + up_cross[:3]``), i.e. those at a quarter of the latent's size
    @staticmethod
    def _hw(extra: dict) -> tuple[int, int]:
        h, w = extra["original_shape"][-2:]
        return (((h + 1) // 2) + 1) // 2, (((w + 1) // 2) + 1) // 2  # two stride-2 downsamples (ceil)

    def _is_blend_layer(self, queries: int, extra: dict) -> bool:
        block = extra.get("block")
        hh, ww = self._hw(extra)
        return block is not None and block[0] in ("input", "output") and queries == hh * ww

    def _record(self, step: int, maps: torch.Tensor):
        if step == 0:  # a new run: forget the previous one's maps
            for s in [s for s in self._maps if s > 0]:
                del self._maps[s]
        entry = self._maps.get(step)
        if entry is None or entry[0].shape != maps.shape or entry[0].device != maps.device:
            entry = self._maps[step] = [torch.zeros_like(maps), 0]
        entry[0] += maps
        entry[1] += 1

    def post_cfg(self, args: dict) -> torch.Tensor:
        """The local blend on the CFG'd prediction: for first-order samplers (ddim, euler) the next latent
        equals the official ``x_t = x_src + mask * (x_t - x_src)`` after the step."""
        denoised = args["denoised"]
        if self.selector is None:
            return denoised
        options = args["model_options"].get("transformer_options", {})
        sigma = args["sigma"]
        step, num_steps, sample_sigmas = self._step(options, sigma)
        layers = [e[0] / e[1] for s, e in sorted(self._maps.items()) if s <= step and e[1] > 0]
        if not layers:
            return denoised
        x = args["input"]
        if x.shape[0] % 2:
            raise ShapeError(f"{NODE}: the latent batch has {x.shape[0]} samples; the local blend needs "
                             "[source, edited] pairs: sample the LATENT of the Prompt2Prompt node.")
        acc = torch.stack(layers).sum(0).to(x.device)
        mask = p2p.local_blend_mask(acc, tuple(x.shape[-2:]))
        s = float(sigma.reshape(-1)[0])
        s_next = float(sample_sigmas[min(step + 1, num_steps)])
        ratio = s_next / max(s - s_next, 1e-12)
        return p2p.local_blend(denoised, mask) + ratio * (p2p.local_blend(x, mask) - x)


def install(model, patch: Prompt2PromptPatch):
    """``model.clone()`` with ``patch`` replacing every SpatialTransformer's attention."""
    unet = model.get_model_object("diffusion_model")
    if not all(hasattr(unet, a) for a in ("input_blocks", "middle_block", "output_blocks")):
        raise ConfigError(f"{NODE}: the model is a {type(unet).__name__}; Prompt2Prompt edits an SD-1.5 UNet "
                          "(load it with 'Load Checkpoint').")
    m = model.clone()
    places = [("input", i, blk) for i, blk in enumerate(unet.input_blocks)] + [("middle", 0, unet.middle_block)] + \
             [("output", i, blk) for i, blk in enumerate(unet.output_blocks)]
    count = 0
    for name, number, blk in places:
        for layer in blk.modules():
            if isinstance(layer, SpatialTransformer):
                for t in range(len(layer.transformer_blocks)):
                    m.set_model_attn1_replace(patch.attn1, name, number, t)
                    m.set_model_attn2_replace(patch.attn2, name, number, t)
                    count += 1
    if count == 0:
        raise ConfigError(f"{NODE}: the model has no cross-attention transformer blocks; use an SD-1.5 checkpoint.")
    if patch.selector is not None:
        m.set_model_sampler_post_cfg_function(patch.post_cfg)
    return m


def pair_latent(latent: dict) -> dict:
    """Each frame twice in a row, with one noise per pair (``batch_index``)."""
    samples = latent["samples"]
    if samples.ndim != 4:
        raise ShapeError(f"{NODE}: the latent has shape {tuple(samples.shape)}; it needs SD-1.5 frames "
                         "[frames, 4, h, w].")
    out = {"samples": samples.repeat_interleave(2, 0)}
    index = latent.get("batch_index") or list(range(samples.shape[0]))
    out["batch_index"] = [int(i) for i in index for _ in range(2)]
    if "noise_mask" in latent:
        mask = latent["noise_mask"]
        out["noise_mask"] = mask.repeat_interleave(2, 0) if mask.shape[0] == samples.shape[0] else mask
    return out


class Prompt2Prompt(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FB_Prompt2Prompt",
            display_name="Prompt2Prompt (SD-1.5)",
            category=CATEGORY,
            description=(
                "Prompt-to-Prompt editing for SD-1.5 (BIVDiff's Prompt2Prompt image model): one sampler run makes "
                "every frame twice, with the source prompt and with the target prompt, and the target's attention "
                "maps follow the source's so only the edited words change. Sample the returned MODEL, "
                "CONDITIONING (as positive) and LATENT with KSampler / KSamplerAdvanced, then take the edited "
                "frames with 'Prompt2Prompt Split'."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SD-1.5 model (Load Checkpoint)."),
                io.Clip.Input("clip", tooltip="The same checkpoint's CLIP: it encodes both prompts and its tokenizer "
                                              "aligns their words."),
                io.Latent.Input("latent", tooltip="The frames to edit as a batch [frames, 4, h, w] (BIVDiff: the "
                                                  "source frames DDIM-inverted with SD-1.5), or an Empty Latent "
                                                  "Image to generate."),
                io.String.Input("source_prompt", multiline=True, default="A car is moving on the road",
                                tooltip="Describes the frames as they are (BIVDiff's idm_prompt)."),
                io.String.Input("target_prompt", multiline=True, default="A car is moving on the road in the forest",
                                tooltip="The edited description. replace: the same words with some swapped; "
                                        "refine: words added or removed."),
                io.Combo.Input("mode", options=list(p2p.MODES), default="refine",
                               tooltip="replace: swap words one for one (same word count); refine: add or remove "
                                       "words (global alignment of the tokens)."),
                io.Float.Input("cross_replace_steps", default=p2p.DEFAULT_CROSS_REPLACE, min=0.0, max=1.0,
                               step=0.05, tooltip="Fraction of the steps, from the start, in which the target "
                                                  "takes the source's cross-attention (BIVDiff: 0.4)."),
                io.Float.Input("self_replace_steps", default=p2p.DEFAULT_SELF_REPLACE, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps, from the start, in which the target takes the "
                                       "source's self-attention in the 16x16 and smaller layers (BIVDiff: 0.4)."),
                io.String.Input("blend_source_words", default="",
                                tooltip="Local blend (optional): words of the source prompt whose attention marks "
                                        "the region that may change, space-separated; BIVDiff's example: car. "
                                        "Empty with blend_target_words empty: the whole frame may change."),
                io.String.Input("blend_target_words", default="",
                                tooltip="Local blend (optional): words of the target prompt whose attention marks "
                                        "the region that may change, space-separated; BIVDiff's example: car."),
                io.String.Input("reweight_words", default="",
                                tooltip="Optional: words of the target prompt whose edited attention is scaled "
                                        "by reweight_strength (Prompt2Prompt's equalizer). Empty: no reweighting."),
                io.Float.Input("reweight_strength", default=1.0, min=-10.0, max=10.0, step=0.1,
                               tooltip="Scale of the reweight_words' attention (>1 stronger, <1 weaker)."),
            ],
            outputs=[
                io.Model.Output("MODEL", display_name="model",
                                tooltip="The model with the attention edit: sample it with the outputs below."),
                io.Conditioning.Output("CONDITIONING", display_name="positive",
                                       tooltip="Source and target prompt, one per member of each pair: the "
                                               "sampler's positive. The negative is a plain CLIP Text Encode."),
                io.Latent.Output("LATENT", display_name="latent",
                                 tooltip="Every frame twice [source, edited, ...], with one noise per pair."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, latent, source_prompt, target_prompt, mode, cross_replace_steps,
                self_replace_steps, blend_source_words, blend_target_words, reweight_words,
                reweight_strength) -> io.NodeOutput:
        check_choice(mode, p2p.MODES, NODE, "mode")
        check_number(cross_replace_steps, NODE, "cross_replace_steps", 0.0, 1.0)
        check_number(self_replace_steps, NODE, "self_replace_steps", 0.0, 1.0)
        check_number(reweight_strength, NODE, "reweight_strength", -10.0, 10.0)
        if clip is None:
            raise ConfigError(f"{NODE}: no CLIP: connect the SD-1.5 checkpoint's CLIP.")
        source = prompt_tokens(clip, source_prompt, "source prompt")
        target = prompt_tokens(clip, target_prompt, "target prompt")
        p2p.make_plan(source, target, mode, 50, cross_replace_steps, self_replace_steps)  # alignment errors now
        selector = None
        if blend_source_words.strip() or blend_target_words.strip():
            selector = p2p.word_selector([_positions(source, blend_source_words, "blend_source_words"),
                                          _positions(target, blend_target_words, "blend_target_words")])
        reweight = None
        if reweight_words.strip():
            reweight = p2p.equalizer(_positions(target, reweight_words, "reweight_words"), float(reweight_strength))
        patch = Prompt2PromptPatch(source, target, mode, float(cross_replace_steps), float(self_replace_steps),
                                   selector, reweight)
        patched = install(model, patch)
        conds, pooled = [], []
        for text in (source_prompt, target_prompt):
            c, p = clip.encode_from_tokens(clip.tokenize(text, disable_weights=True), return_pooled=True)
            conds.append(c)
            pooled.append(p)
        extra = {"pooled_output": torch.cat(pooled)} if all(p is not None for p in pooled) else {}
        positive = [[torch.cat(conds), extra]]
        return io.NodeOutput(patched, positive, pair_latent(latent))


class Prompt2PromptSplit(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FB_Prompt2PromptSplit",
            display_name="Prompt2Prompt Split",
            category=CATEGORY,
            description="Splits a sampled Prompt2Prompt batch [source, edited, source, edited, ...] into the source "
                        "frames and the edited frames.",
            inputs=[io.Latent.Input("latent", tooltip="The sampler's output for the Prompt2Prompt node's LATENT.")],
            outputs=[io.Latent.Output("SOURCE", display_name="source",
                                      tooltip="The frames made with the source prompt (the reconstruction)."),
                     io.Latent.Output("EDITED", display_name="edited",
                                      tooltip="The frames made with the target prompt.")],
        )

    @classmethod
    def execute(cls, latent) -> io.NodeOutput:
        samples = latent["samples"]
        if samples.shape[0] % 2:
            raise ShapeError(f"Prompt2Prompt Split: the latent has {samples.shape[0]} samples; it needs [source, "
                             "edited] pairs, as the Prompt2Prompt node's LATENT after sampling.")
        return io.NodeOutput({"samples": samples[0::2].contiguous()}, {"samples": samples[1::2].contiguous()})


NODES = [Prompt2Prompt, Prompt2PromptSplit]
