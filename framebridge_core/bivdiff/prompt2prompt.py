"""Prompt-to-Prompt attention editing (BIVDiff's Prompt2Prompt image model), pure torch.

Semantics follow the official code, ``MCG-NJU/BIVDiff models/Prompt2Prompt/pipeline_prompt2prompt.py``
(itself diffusers' community Prompt2Prompt pipeline): the source prompt's branch is generated as is, and
in the edited prompt's branch

* cross-attention maps are taken from the source through a word alignment (``replace``: same word count,
  a token-to-token mapper; ``refine``: a global alignment of the token sequences, mapper + alphas), mixed
  per step and per token by ``cross_replace_alpha`` (official ``get_time_words_attention_alpha``);
* self-attention maps of layers with at most 16x16 query tokens are copied from the source during the
  first ``self_replace_steps`` of the run;
* an optional equalizer rescales the edited cross-attention of chosen tokens (official ``AttentionReweight``
  chained on top of replace / refine);
* an optional local blend keeps the source latent outside a mask built from the cross-attention maps of
  chosen words (official ``LocalBlend``, threshold 0.3).

Only the conditional half of a classifier-free-guidance batch is edited, as officially. Tokenization is
left to the caller (ComfyUI's CLIP tokenizer): functions take token id lists and per-word token counts.
Sources of batches are laid out in pairs: ``[source_0, edited_0, source_1, edited_1, ...]`` (the official
per-frame batch is one pair).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError

#: CLIP's context length (official ``max_num_words`` / ``max_len``).
MAX_TOKENS = 77
#: Self-attention is replaced only in layers with at most this many query tokens (official ``16**2``).
SELF_REPLACE_MAX_QUERIES = 16 ** 2
#: Local blend threshold on the max-normalised word map (official ``LocalBlend(threshold=0.3)``).
LOCAL_BLEND_THRESHOLD = 0.3
#: Official defaults (``create_controller``: ``n_cross_replace`` / ``n_self_replace`` = 0.4).
DEFAULT_CROSS_REPLACE, DEFAULT_SELF_REPLACE = 0.4, 0.4
MODES = ("replace", "refine")


@dataclass(frozen=True)
class PromptTokens:
    """A tokenized prompt: ``ids`` as the tokenizer's ``encode`` gives them (start token, the words' tokens,
    end token; no padding) and how many tokens each space-separated word (``text.split(" ")``) became."""

    text: str
    ids: tuple[int, ...]
    word_token_counts: tuple[int, ...]

    def __post_init__(self):
        words = self.text.split(" ")
        if len(words) != len(self.word_token_counts):
            raise ConfigError(f"prompt {self.text!r} has {len(words)} space-separated words but "
                              f"{len(self.word_token_counts)} token counts were given; give one count per word.")
        if sum(self.word_token_counts) != len(self.ids) - 2:
            raise ConfigError(f"prompt {self.text!r}: the words' token counts add up to "
                              f"{sum(self.word_token_counts)} but there are {len(self.ids) - 2} tokens between the "
                              "start and end tokens; tokenize each word with the prompt's tokenizer.")
        if len(self.ids) > MAX_TOKENS:
            raise ConfigError(f"prompt {self.text!r} is {len(self.ids)} tokens long with its start and end tokens; "
                              f"Prompt2Prompt aligns single {MAX_TOKENS}-token CLIP windows: shorten it to at most "
                              f"{MAX_TOKENS - 2} tokens.")

    @property
    def words(self) -> list[str]:
        return self.text.split(" ")

    def word_positions(self, word: int | str) -> list[int]:
        """Token positions (1 = first token after the start token) of word index ``word``, or of every word
        equal to the string ``word`` (official ``get_word_inds``)."""
        if isinstance(word, str):
            places = [i for i, w in enumerate(self.words) if w == word]
        else:
            places = [int(word)]
        out, start = [], 1
        for i, count in enumerate(self.word_token_counts):
            if i in places:
                out.extend(range(start, start + count))
            start += count
        return out


# ---------------------------------------------------------------------------------------------- alignment


def replacement_mapper(source: PromptTokens, target: PromptTokens, max_len: int = MAX_TOKENS) -> torch.Tensor:
    """``[max_len, max_len]`` map from source token positions (rows) to target positions (columns) for
    ``replace`` (official ``get_replacement_mapper_``): the prompts must have the same number of words; a
    changed word of n source tokens and m target tokens maps with weight 1 (n == m) or 1/m.

    After the last changed word the official loop maps position j to j (``mapper[j, j] = 1``), not i to j;
    kept, so that a changed word of a different token count shifts the remaining tokens as officially."""
    words_x, words_y = source.words, target.words
    if len(words_x) != len(words_y):
        raise ConfigError(
            f"mode 'replace' swaps words one for one, so both prompts need the same number of words: the source "
            f"prompt has {len(words_x)} words ({len(source.ids) - 2} tokens) and the target prompt has "
            f"{len(words_y)} words ({len(target.ids) - 2} tokens). Use mode 'refine' to add or remove words.")
    changed = [i for i in range(len(words_y)) if words_y[i] != words_x[i]]
    inds_source = [source.word_positions(i) for i in changed]
    inds_target = [target.word_positions(i) for i in changed]
    for w, src, tgt in zip(changed, inds_source, inds_target):
        if not src or not tgt:
            raise ConfigError(f"word {w} ({words_x[w]!r} -> {words_y[w]!r}) has no tokens in one of the prompts "
                              "(an empty word from two spaces in a row?); write the prompts with single spaces.")
    mapper = torch.zeros(max_len, max_len, dtype=torch.float64)
    i = j = cur = 0
    while i < max_len and j < max_len:
        if cur < len(inds_source) and inds_source[cur][0] == i:
            src, tgt = inds_source[cur], inds_target[cur]
            if len(src) == len(tgt):
                mapper[src, tgt] = 1
            else:
                for t in tgt:
                    mapper[src, t] = 1 / len(tgt)
            cur += 1
            i += len(src)
            j += len(tgt)
        elif cur < len(inds_source):
            mapper[i, j] = 1
            i += 1
            j += 1
        else:
            mapper[j, j] = 1
            i += 1
            j += 1
    return mapper.float()


def _global_align(x: Sequence[int], y: Sequence[int]) -> torch.Tensor:
    """Needleman-Wunsch with gap 0, match 1, mismatch -1 and ties broken left, up, diagonal (official
    ``global_align`` + ``get_aligned_sequences``): for each token of ``y``, its partner in ``x`` or -1."""
    nx, ny = len(x), len(y)
    score = [[0] * (ny + 1) for _ in range(nx + 1)]
    trace = [[0] * (ny + 1) for _ in range(nx + 1)]
    for j in range(1, ny + 1):
        trace[0][j] = 1
    for i in range(1, nx + 1):
        trace[i][0] = 2
    trace[0][0] = 4
    for i in range(1, nx + 1):
        for j in range(1, ny + 1):
            left, up = score[i][j - 1], score[i - 1][j]
            diag = score[i - 1][j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            best = max(left, up, diag)
            score[i][j] = best
            trace[i][j] = 1 if best == left else 2 if best == up else 3
    i, j, y_to_x = nx, ny, []
    while i > 0 or j > 0:
        step = trace[i][j]
        if step == 3:
            i, j = i - 1, j - 1
            y_to_x.append(i)
        elif step == 1:
            j -= 1
            y_to_x.append(-1)
        elif step == 2:
            i -= 1
        else:
            break
    y_to_x.reverse()
    return torch.tensor(y_to_x, dtype=torch.int64)


def refinement_mapper(source: PromptTokens, target: PromptTokens,
                      max_len: int = MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mapper [max_len] int64, alphas [max_len])`` for ``refine`` (official ``get_mapper``): target token t
    reads source token ``mapper[t]``; ``alphas[t]`` is 0 for target tokens without a source partner (new
    words), whose own attention is kept."""
    y_to_x = _global_align(source.ids, target.ids)
    n = y_to_x.shape[0]
    alphas = torch.ones(max_len)
    alphas[:n] = y_to_x.ne(-1).float()
    mapper = torch.zeros(max_len, dtype=torch.int64)
    mapper[:n] = y_to_x
    mapper[n:] = len(target.ids) + torch.arange(max_len - len(target.ids))
    return mapper, alphas


# -------------------------------------------------------------------------------------------- schedules


def _bounds(value) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return 0.0, float(value)
    start, end = value
    return float(start), float(end)


def _check_fraction(value, name: str) -> tuple[float, float]:
    start, end = _bounds(value)
    if not (0.0 <= start <= end <= 1.0):
        raise ConfigError(f"{name}={value!r} must be a fraction of the steps in [0, 1] (or a (start, end) pair "
                          "with 0 <= start <= end <= 1); BIVDiff uses 0.4.")
    return start, end


def cross_replace_alpha(num_steps: int, cross_replace_steps=DEFAULT_CROSS_REPLACE,
                        word_steps: Sequence[tuple[Sequence[int], object]] = (),
                        max_len: int = MAX_TOKENS) -> torch.Tensor:
    """``[num_steps + 1, max_len]``: 1 where the edited branch takes the source's cross-attention of a
    target token at a step (official ``get_time_words_attention_alpha`` for one edited prompt). The bounds
    are fractions of ``num_steps + 1`` rows, as officially; ``word_steps`` overrides them for given target
    token positions (official dict entries keyed by a word)."""
    alpha = torch.zeros(num_steps + 1, max_len)

    def fill(bounds, positions):
        start, end = int(bounds[0] * alpha.shape[0]), int(bounds[1] * alpha.shape[0])
        alpha[:start, positions] = 0
        alpha[start:end, positions] = 1
        alpha[end:, positions] = 0

    fill(_check_fraction(cross_replace_steps, "cross_replace_steps"), torch.arange(max_len))
    for positions, bounds in word_steps:
        if len(positions) > 0:
            fill(_check_fraction(bounds, "word cross_replace_steps"), torch.as_tensor(list(positions)))
    return alpha


def self_replace_window(num_steps: int, self_replace_steps=DEFAULT_SELF_REPLACE) -> tuple[int, int]:
    """Steps ``[start, end)`` in which self-attention is replaced (fractions of ``num_steps``, officially)."""
    start, end = _check_fraction(self_replace_steps, "self_replace_steps")
    return int(num_steps * start), int(num_steps * end)


def equalizer(positions: Sequence[int], strengths: Sequence[float] | float, max_len: int = MAX_TOKENS) -> torch.Tensor:
    """``[max_len]`` per-token scale of the edited cross-attention (official ``get_equalizer`` for one edited
    prompt): ``strengths`` is one value for every position or one per position."""
    eq = torch.ones(max_len)
    values = torch.as_tensor(strengths, dtype=torch.float32)
    eq[torch.as_tensor(list(positions), dtype=torch.int64)] = values
    return eq


def step_index(sample_sigmas: torch.Tensor, sigma) -> int:
    """The sampler step ``i`` whose interval ``[sigmas[i+1], sigmas[i]]`` holds ``sigma`` (the first one when a
    batch carries several), so that the intermediate evaluations of higher-order samplers count as their
    step; the official step counter is the number of UNet calls so far."""
    sig = torch.as_tensor(sample_sigmas, dtype=torch.float64).reshape(-1).cpu()
    s = float(torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)[0])
    n = max(sig.shape[0] - 1, 1)
    i = int((sig[:-1] >= s * (1 - 1e-4)).sum().item()) - 1
    return min(max(i, 0), n - 1)


# ----------------------------------------------------------------------------------------------- editor


@dataclass
class EditPlan:
    """Everything the attention edit needs for one source / target prompt pair."""

    mode: str
    num_steps: int
    cross_alpha: torch.Tensor           # [num_steps + 1, max_len]
    self_window: tuple[int, int]
    mapper: torch.Tensor                # replace: [max_len, max_len]; refine: [max_len] int64
    alphas: torch.Tensor | None = None  # refine: [max_len]
    equalizer: torch.Tensor | None = None

    @property
    def max_len(self) -> int:
        return self.cross_alpha.shape[-1]


def make_plan(source: PromptTokens, target: PromptTokens, mode: str, num_steps: int,
              cross_replace_steps=DEFAULT_CROSS_REPLACE, self_replace_steps=DEFAULT_SELF_REPLACE,
              word_steps: Sequence[tuple[Sequence[int], object]] = (),
              reweight: torch.Tensor | None = None) -> EditPlan:
    """The edit for ``mode`` (``"replace"`` / ``"refine"``) over ``num_steps`` sampling steps."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not a Prompt2Prompt edit; choose one of {', '.join(MODES)}.")
    if int(num_steps) < 1:
        raise ConfigError(f"num_steps={num_steps} must be >= 1.")
    alphas = None
    if mode == "replace":
        mapper = replacement_mapper(source, target)
    else:
        mapper, alphas = refinement_mapper(source, target)
    return EditPlan(mode, int(num_steps), cross_replace_alpha(num_steps, cross_replace_steps, word_steps),
                    self_replace_window(num_steps, self_replace_steps), mapper, alphas, reweight)


def _replaced_cross(plan: EditPlan, base: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """Source maps ``base [P, h, q, k]`` carried into the edited branch's token order (official
    ``AttentionReplace`` / ``AttentionRefine`` / ``AttentionReweight.replace_cross_attention``)."""
    mapper = plan.mapper.to(base.device)
    if plan.mode == "replace":
        out = torch.einsum("phqw,wn->phqn", base, mapper.to(base.dtype))
    else:
        alphas = plan.alphas.to(device=base.device, dtype=base.dtype)
        out = base[..., mapper] * alphas + edited * (1 - alphas)
    if plan.equalizer is not None:
        out = out * plan.equalizer.to(device=base.device, dtype=base.dtype)
    return out


def edit_attention(plan: EditPlan, probs: torch.Tensor, heads: int, is_cross: bool, step: int,
                   num_queries: int | None = None) -> torch.Tensor:
    """Edited attention probabilities of a conditional batch in pair layout.

    ``probs``: ``[2P * heads, q, k]`` softmax maps, batch-major (``b * heads + head``), pairs ``[source,
    edited]``. Returns a new tensor; the source rows are unchanged (official ``AttentionControlEdit.forward``).
    ``num_queries``: the layer's query count when ``probs`` holds only some of its rows (the edit is row-wise).
    """
    rows, q, k = probs.shape
    if rows % (2 * heads):
        raise ShapeError(f"Prompt2Prompt needs the batch in [source, edited] pairs: {rows // heads} samples "
                         "is odd. Feed the sampler the LATENT and CONDITIONING of the Prompt2Prompt node.")
    if not is_cross:
        start, end = plan.self_window
        if not (start <= step < end) or (num_queries or q) > SELF_REPLACE_MAX_QUERIES:
            return probs
    if is_cross and k != plan.max_len:
        raise ShapeError(f"the cross-attention has {k} context tokens but Prompt2Prompt aligns {plan.max_len}: "
                         f"keep the negative prompt within one {plan.max_len}-token CLIP window (75 words-pieces) "
                         "so ComfyUI does not lengthen the batch's context.")
    pairs = probs.reshape(rows // (2 * heads), 2, heads, q, k)
    base, edited = pairs[:, 0], pairs[:, 1]
    if is_cross:
        a = plan.cross_alpha[min(step, plan.num_steps)].to(device=probs.device, dtype=probs.dtype)
        new = _replaced_cross(plan, base, edited) * a + (1 - a) * edited
    else:
        new = base
    return torch.stack([base, new], dim=1).reshape(rows, q, k)


# ---------------------------------------------------------------------------------------------- local blend


def word_selector(positions_per_prompt: Sequence[Sequence[int]], max_len: int = MAX_TOKENS) -> torch.Tensor:
    """``[2, max_len]`` 0/1 selection of the local-blend words' tokens, source row then edited row
    (official ``LocalBlend.alpha_layers``)."""
    sel = torch.zeros(len(positions_per_prompt), max_len)
    for i, positions in enumerate(positions_per_prompt):
        if len(positions):
            sel[i, torch.as_tensor(list(positions), dtype=torch.int64)] = 1
    return sel


def local_blend_mask(word_maps: torch.Tensor, size: tuple[int, int], threshold: float = LOCAL_BLEND_THRESHOLD,
                     k: int = 1) -> torch.Tensor:
    """``[P, 1, H, W]`` 0/1 mask where the edited branch may differ from the source (official
    ``LocalBlend.__call__``): the union over source and edited branch of the max-pooled (3x3), nearest-
    upsampled, max-normalised word attention above ``threshold``.

    ``word_maps``: ``[P, 2, h', w']``, per pair and branch the selected words' cross-attention summed over
    tokens and averaged over the blend layers and heads (official: accumulated over the steps so far; the
    normalisation makes sum and mean over steps equal)."""
    pairs, _, hh, ww = word_maps.shape
    maps = word_maps.reshape(pairs * 2, 1, hh, ww)
    mask = F.max_pool2d(maps, (k * 2 + 1, k * 2 + 1), (1, 1), padding=(k, k))
    mask = F.interpolate(mask, size=tuple(size))
    mask = mask / mask.max(2, keepdim=True)[0].max(3, keepdim=True)[0]
    mask = mask.gt(threshold).reshape(pairs, 2, 1, *size)
    return (mask[:, 0] | mask[:, 1]).float()


def blend_word_maps(probs: torch.Tensor, heads: int, selector: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``[P, 2, h', w']``: one layer's cross-attention ``[2P * heads, h'*w', k]`` (pair layout) reduced to the
    selected words' map per pair and branch, averaged over heads."""
    rows, q, k = probs.shape
    maps = probs.reshape(rows // (2 * heads), 2, heads, hw[0], hw[1], k)
    maps = (maps * selector.to(device=probs.device, dtype=probs.dtype)[None, :, None, None, None, :]).sum(-1)
    return maps.mean(2)


def local_blend(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pair-layout ``x [2P, C, H, W]`` with the edited rows kept equal to the source outside ``mask``
    (``x_t = x_t[:1] + mask * (x_t - x_t[:1])`` per pair, as officially)."""
    pairs = x.reshape(x.shape[0] // 2, 2, *x.shape[1:])
    src = pairs[:, :1]
    out = src + mask.to(x.dtype)[:, None] * (pairs - src)
    return out.reshape(x.shape)
