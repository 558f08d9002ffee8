"""Widget values ComfyUI 0.3.64 lets through for V3 nodes (a combo value that is not an option, NaN in a
number widget) are refused when the prompt is validated, naming the node, the input and what is allowed;
the next good prompt runs."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.host

TINY = "FrameBridge-Tiny-Animate-Image"


def _refused(host, prompt, node_id: str, *fragments: str) -> None:
    run = host.run(prompt)
    assert not run.valid, run.describe()
    errors = run.node_errors[node_id]["errors"]
    text = " ".join(f"{e.get('message', '')} {e.get('details', '')}" for e in errors)
    for fragment in fragments:
        assert fragment in text, text


@pytest.mark.parametrize("node, name, value, fragments", [
    ("5", "resize", "bogus", ("Bridge Prior from Image", "resize='bogus'", "'center crop', 'stretch', 'none'")),
    ("3", "motion", "sideways", ("FrameBridge Camera Motion", "motion='sideways'", "'pan-left'")),
    ("2", "weight_dtype", "fp64", ("Load FrameBridge", "weight_dtype='fp64'", "'fp16'")),
    ("2", "ckpt_name", "missing.safetensors", ("ckpt_name='missing.safetensors'", "models folder")),
    ("6", "cfg", float("nan"), ("Bridge Sampler", "cfg=nan", "not a finite number")),
    ("6", "method", "euler", ("method='euler'", "'sde'")),
])
def test_a_bad_widget_value_is_refused_before_anything_runs(host, node, name, value, fragments):
    prompt = host.lower_steps(host.load_api(TINY), 2)
    prompt[node]["inputs"][name] = value
    _refused(host, prompt, node, *fragments)


def test_the_next_good_prompt_runs(host):
    run = host.run(host.lower_steps(host.load_api(TINY), 2))
    assert run.valid and run.success, run.describe()


def test_a_nan_image_is_refused_by_bridge_prior_from_image(host):
    import torch

    model = host.node_class("FB_LoadFrameBridge").execute("framebridge-tiny-motion-np.safetensors", "default").result[0]
    vae = host.node_class("VAELoader")().load_vae("pixel_space")[0]
    pos, neg = host.node_class("FB_CameraMotion").execute("zoom-in").result
    prior = host.node_class("FB_BridgePriorFromImage")
    image = torch.rand(1, 64, 64, 3)
    image[0, 3, 5, 1] = float("nan")
    with pytest.raises(Exception, match="NaN or infinite pixels") as caught:
        prior.execute(model, vae, image, pos, neg, 16, "center crop")
    assert type(caught.value).__name__ == "ShapeError"
    out = prior.execute(model, vae, torch.nan_to_num(image), pos, neg, 16, "center crop").result[2]["samples"]
    assert torch.isfinite(out).all()
