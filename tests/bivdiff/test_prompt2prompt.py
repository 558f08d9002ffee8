"""Prompt2Prompt attention editing: parity with the official controller (committed fixture: the controller
classes of MCG-NJU/BIVDiff models/Prompt2Prompt/pipeline_prompt2prompt.py run on a seeded tiny diffusers
UNet2DConditionModel, 3 DDIM steps, CFG 7.5, cross_replace_steps 0.5, self_replace_steps 0.4, a hand-made
word-piece vocabulary), alignment values and typed errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from framebridge_core.bivdiff.prompt2prompt import (
    MAX_TOKENS,
    PromptTokens,
    blend_word_maps,
    cross_replace_alpha,
    edit_attention,
    equalizer,
    local_blend,
    local_blend_mask,
    make_plan,
    refinement_mapper,
    replacement_mapper,
    self_replace_window,
    step_index,
    word_selector,
)
from framebridge_core.errors import ConfigError, ShapeError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "prompt2prompt" / "official_controller.safetensors"


@pytest.fixture(scope="module")
def ref():
    with safe_open(str(FIXTURE), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


def toks(d) -> PromptTokens:
    return PromptTokens(d["text"], tuple(d["ids"]), tuple(d["word_token_counts"]))


def pair(meta, case):
    c = meta["cases"][case]
    return toks(c["source"]), toks(c["target"])


# ------------------------------------------------------------------------------------ alignment parity


@pytest.mark.parametrize("case", ["replace_same", "replace_longer", "replace_two"])
def test_replacement_mapper_matches_official(ref, case):
    meta, t = ref
    src, tgt = pair(meta, case)
    assert torch.equal(replacement_mapper(src, tgt), t[f"{case}.mapper"].float())


def test_replacement_mapper_values():
    # "cat" (1 token) -> "bicycle" (2 tokens): the word's attention is split 1/2, 1/2
    src = PromptTokens("a cat sits", (0, 5, 6, 7, 1), (1, 1, 1))
    tgt = PromptTokens("a bicycle sits", (0, 5, 8, 9, 7, 1), (1, 2, 1))
    m = replacement_mapper(src, tgt)
    assert m[0, 0] == 1 and m[1, 1] == 1
    assert m[2, 2] == 0.5 and m[2, 3] == 0.5
    # after the last changed word the official loop maps j -> j (source 4 -> target 4), not i -> j
    assert m[4, 4] == 1 and m[3, 4] == 0 and m[76, 76] == 1


@pytest.mark.parametrize("case", ["refine_add", "refine_swap"])
def test_refinement_mapper_matches_official(ref, case):
    meta, t = ref
    src, tgt = pair(meta, case)
    mapper, alphas = refinement_mapper(src, tgt)
    assert torch.equal(mapper, t[f"{case}.mapper"])
    assert torch.equal(alphas, t[f"{case}.alphas"])


def test_refinement_mapper_values():
    # "a car" -> "a white car": the new word has no partner (alpha 0), the rest map to their source tokens
    src = PromptTokens("a car", (0, 5, 6, 1), (1, 1))
    tgt = PromptTokens("a white car", (0, 5, 9, 6, 1), (1, 1, 1))
    mapper, alphas = refinement_mapper(src, tgt)
    assert mapper[:5].tolist() == [0, 1, -1, 2, 3]
    assert alphas[:5].tolist() == [1, 1, 0, 1, 1]
    assert mapper[5:8].tolist() == [5, 6, 7] and alphas[5:].eq(1).all()


def test_schedules_match_official(ref):
    meta, t = ref
    for key, steps, frac in meta["alpha_keys"]:
        frac = tuple(frac) if isinstance(frac, list) else frac
        assert torch.equal(cross_replace_alpha(steps, frac), t[key]), key
    src, tgt = pair(meta, "refine_add")
    words = [(tgt.word_positions("forest"), 1.0)]
    assert torch.equal(cross_replace_alpha(5, 0.4, words), t["alpha_words"])
    assert torch.equal(equalizer(tgt.word_positions("white"), 2.5), t["equalizer"])


def test_schedule_counts():
    # 50 steps, 0.4: cross over int(0.4 * 51) = 20 rows, self over int(0.4 * 50) = 20 steps
    a = cross_replace_alpha(50, 0.4)
    assert a[:20].eq(1).all() and a[20:].eq(0).all()
    assert self_replace_window(50, 0.4) == (0, 20)
    assert self_replace_window(50, (0.1, 0.5)) == (5, 25)
    assert cross_replace_alpha(4, 1.0).eq(1).all()


def test_word_positions():
    p = PromptTokens("a car and a car", (0, 5, 6, 7, 5, 6, 1), (1, 1, 1, 1, 1))
    assert p.word_positions("car") == [2, 5]
    assert p.word_positions(2) == [3]
    assert p.word_positions("bus") == []


# ------------------------------------------------------------------------------------ attention parity


@pytest.mark.parametrize("case", ["replace", "refine", "replace_lb", "refine_lb"])
def test_edited_attention_maps_match_official(ref, case):
    meta, t = ref
    c = meta["cases"][case]
    src, tgt = pair(meta, case)
    plan = make_plan(src, tgt, c["mode"], c["steps"], c["cross_replace_steps"], c["self_replace_steps"])
    checked = 0
    for key, step, q in meta["layers"][case]:
        pre, post = t[f"{case}.{key}.{step}.pre"], t[f"{case}.{key}.{step}.post"]
        heads = pre.shape[0] // 2
        # the fixture keeps a few query rows of each map; the edit is row-wise, so pass the layer's true size
        ours = edit_attention(plan, pre, heads, key.endswith("cross"), step, num_queries=q)
        assert torch.equal(ours[:heads], pre[:heads]), (key, step)  # the source branch is never edited
        err = (ours[heads:] - post).abs().max().item()
        assert err <= 1e-6, (key, step, err)
        checked += 1
    assert checked == (9 if case.endswith("lb") else 16)


def test_edit_changes_what_it_should(ref):
    meta, t = ref
    src, tgt = pair(meta, "replace")
    plan = make_plan(src, tgt, "replace", 3, 0.5, 0.4)
    pre = t["replace.mid64_cross.0.pre"]
    assert not torch.allclose(edit_attention(plan, pre, 2, True, 0, num_queries=64)[2:], pre[2:])
    # after the cross window (step 2 of 3 with 0.5) the edited branch keeps its own maps
    assert torch.equal(edit_attention(plan, pre, 2, True, 2, num_queries=64), pre)
    # self-attention: replaced at step 0 (<= 16x16 queries), kept at step 1 and in larger layers
    self_pre = t["replace.mid64_self.0.pre"]
    assert torch.equal(edit_attention(plan, self_pre, 2, False, 0)[2:], self_pre[:2])
    assert torch.equal(edit_attention(plan, self_pre, 2, False, 1), self_pre)
    assert torch.equal(edit_attention(plan, self_pre, 2, False, 0, num_queries=1024), self_pre)


def test_pairs_in_one_batch_are_edited_independently(ref):
    meta, t = ref
    src, tgt = pair(meta, "refine")
    plan = make_plan(src, tgt, "refine", 3, 0.5, 0.4)
    a, b = t["refine.mid64_cross.0.pre"], t["refine.mid64_cross.1.pre"]
    both = edit_attention(plan, torch.cat([a, b]), 2, True, 0)
    assert torch.equal(both, torch.cat([edit_attention(plan, a, 2, True, 0), edit_attention(plan, b, 2, True, 0)]))


def test_equalizer_scales_the_edited_words(ref):
    meta, t = ref
    src, tgt = pair(meta, "refine")
    pos = tgt.word_positions("white")
    plain = make_plan(src, tgt, "refine", 3, 0.5, 0.4)
    eq = make_plan(src, tgt, "refine", 3, 0.5, 0.4, reweight=equalizer(pos, 2.0))
    pre = t["refine.mid64_cross.0.pre"]
    a, b = edit_attention(plain, pre, 2, True, 0), edit_attention(eq, pre, 2, True, 0)
    assert torch.allclose(b[2:, :, pos], 2 * a[2:, :, pos])
    others = [i for i in range(MAX_TOKENS) if i not in pos]
    assert torch.equal(b[2:, :, others], a[2:, :, others])


# ------------------------------------------------------------------------------------------- local blend


@pytest.mark.parametrize("case", ["replace_lb", "refine_lb"])
def test_local_blend_matches_official(ref, case):
    meta, t = ref
    c = meta["cases"][case]
    src, tgt = pair(meta, case)
    words = c["blend_words"]
    selector = word_selector([src.word_positions(words[0]), tgt.word_positions(words[1])])
    assert selector.tolist() == c["blend_selector"]
    cols = c["blend_columns"]
    layer_maps = []
    for j in range(5):
        part = t[f"{case}.blend_maps.{j}"]  # the official accumulated maps, only the selected token columns
        full = torch.zeros(*part.shape[:2], MAX_TOKENS)
        full[..., cols] = part
        layer_maps.append(blend_word_maps(full, part.shape[0] // 2, selector, (16, 16)))
    mask = local_blend_mask(torch.stack(layer_maps).mean(0), (32, 32))
    before, after = t[f"{case}.blend_before"], t[f"{case}.blend_after"]
    ours = local_blend(before, mask)
    assert (ours - after).abs().max().item() <= 1e-6
    assert 0 < mask.mean().item() < 1  # a real local mask, not all or nothing
    assert torch.equal(ours[0], before[0])


# ------------------------------------------------------------------------------------------------ errors


def test_replace_with_different_word_counts_is_a_typed_error(ref):
    meta, _ = ref
    src, tgt = pair(meta, "refine_add")
    with pytest.raises(ConfigError, match=r"source prompt has 5 words \(5 tokens\).*target prompt has 9 words "
                                          r"\(10 tokens\).*mode 'refine'"):
        make_plan(src, tgt, "replace", 50)


def test_bad_options_are_typed_errors():
    p = PromptTokens("a car", (0, 5, 6, 1), (1, 1))
    with pytest.raises(ConfigError, match=r"mode='swap'.*replace, refine"):
        make_plan(p, p, "swap", 50)
    with pytest.raises(ConfigError, match=r"cross_replace_steps=1.5 must be a fraction"):
        make_plan(p, p, "replace", 50, cross_replace_steps=1.5)
    with pytest.raises(ConfigError, match=r"self_replace_steps=-0.1"):
        make_plan(p, p, "replace", 50, self_replace_steps=-0.1)
    with pytest.raises(ConfigError, match=r"2 space-separated words but 1 token counts"):
        PromptTokens("a car", (0, 5, 6, 1), (2,))
    with pytest.raises(ConfigError, match=r"80 tokens long.*at most 75"):
        PromptTokens(" ".join(["x"] * 78), tuple(range(80)), (1,) * 78)
    plan = make_plan(p, p, "replace", 4)
    with pytest.raises(ShapeError, match=r"pairs: 3 samples is odd"):
        edit_attention(plan, torch.rand(6, 4, 77), 2, True, 0)
    with pytest.raises(ShapeError, match=r"154 context tokens"):
        edit_attention(plan, torch.rand(4, 4, 154), 2, True, 0)


def test_step_index_from_sigmas():
    sigmas = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    assert [step_index(sigmas, s) for s in (14.6, 7.0, 3.0, 1.0)] == [0, 1, 2, 3]
    assert step_index(sigmas, torch.tensor([5.0, 5.0])) == 1  # between steps: a second-order sampler's midpoint
    assert step_index(sigmas, 14.6 * (1 - 1e-6)) == 0 and step_index(sigmas, 20.0) == 0
