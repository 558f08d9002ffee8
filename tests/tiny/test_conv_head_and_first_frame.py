"""The tiny models' conv head (no patch grid) and the kept first frame (docs/notes/tiny-model.md)."""

from __future__ import annotations

import pytest
import torch

from framebridge_core.errors import ConfigError
from framebridge_core.families.latte.checkpoint import DETECTOR
from framebridge_core.families.latte.frames import LatteBridgeFrames
from framebridge_core.families.latte.network import LatteConfig, LatteModel, LatteNeuralPrior
from framebridge_core.tiny.format import network_config
from framebridge_core.tiny.variants import Schedules, generate
from framebridge_core.training.loop import add_conv_head, build_network


def _cfg(**kw) -> LatteConfig:
    base = dict(input_size=16, patch_size=4, in_channels=3, out_channels=3, hidden_size=48, depth=2,
                num_heads=2, num_frames=4, num_classes=3, output="x0")
    return LatteConfig(**dict(base, **kw))


def _randomised(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net.eval()


def test_head_config_is_checked():
    with pytest.raises(ConfigError, match="head_features=4 needs a conv head"):
        _cfg(head_features=4)
    with pytest.raises(ConfigError, match="head_width=-1"):
        _cfg(head_width=-1)
    assert _cfg(head_width=8, head_features=4).final_channels == 7


def test_a_linear_head_checkpoint_warm_starts_the_conv_head_exactly():
    linear = _randomised(LatteModel(_cfg()))
    conv = build_network("bridge", _cfg(head_width=8, head_features=4), torch.Generator().manual_seed(1))
    conv.load_state_dict(add_conv_head(linear.state_dict(), conv))
    x = torch.randn(2, 5, 3, 16, 16)
    t, y = torch.tensor([5, 700]), torch.tensor([0, 2])
    with torch.no_grad():
        a, b = linear(x, t, y), conv(x.clone(), t, y)
    assert torch.equal(a, b)
    # once the head's last convolution is not zero it changes the output at pixel level
    with torch.no_grad():
        conv.head.layers[-1].weight.normal_(0, 0.1)
        c = conv(x, t, y)
    assert (c - a).abs().max() > 1e-3


def test_the_detector_reads_the_conv_head_and_the_keep_flag():
    cfg = _cfg(head_width=8, head_features=4)
    sd = _randomised(LatteModel(cfg)).state_dict()
    info = DETECTOR.detect(sd, {"framebridge.predicts": "x0", "framebridge.num_heads": "2",
                                "framebridge.keep_first_frame": "true"})
    assert info.config == LatteConfig(**dict(cfg.to_dict(), keep_first_frame=True))
    info = DETECTOR.detect(sd, {"framebridge.predicts": "x0", "framebridge.num_heads": "2"})
    assert info.config.head_width == 8 and info.config.out_channels == 3 and not info.config.keep_first_frame
    broken = {k: v for k, v in sd.items() if k != "head.layers.4.weight"}
    with pytest.raises(Exception, match="incomplete or malformed conv head"):
        DETECTOR.detect(broken, {"framebridge.num_heads": "2"})


def test_the_neural_prior_keeps_frame_0():
    cfg = _cfg(in_channels=3, condition_type=None, has_timestep=False, head_width=8, head_features=4,
               keep_first_frame=True)
    net = _randomised(LatteNeuralPrior(cfg))
    first = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = net(first, torch.tensor([0, 1]))
    assert torch.equal(out[:, 0], first)
    assert (out[:, 1:] - first[:, None]).abs().mean() > 0.01   # the other frames are the network's


@pytest.mark.parametrize("kind", ["bridge", "diffusion", "saf"])
def test_every_sampled_variant_returns_the_input_as_frame_0(kind):
    cfg = network_config(kind, "smoke", 3, "x0", keep_first_frame=True)
    net = _randomised(build_network(kind, cfg))
    first = torch.rand(2, 3, 16, 16) * 2 - 1
    kw = dict(steps=4, sched=Schedules.default(), generator=torch.Generator().manual_seed(0))
    video = generate(kind, net, first, torch.tensor([0, 1]), **kw)
    assert torch.allclose(video[:, 0], first, atol=1e-5), (video[:, 0] - first).abs().max()
    free = generate(kind, net, first, torch.tensor([0, 1]), keep_first_frame=False, **kw)
    assert (free[:, 0] - first).abs().max() > 1e-2   # without the option frame 0 is the network's
    assert torch.allclose(free[:, 1:].mean(), video[:, 1:].mean(), atol=1.0)


def test_the_comfyui_adapter_keeps_frame_0_through_the_eps_psi_it_returns():
    cfg = _cfg(head_width=8, head_features=4, keep_first_frame=True)
    frames = LatteBridgeFrames(cfg)
    _randomised(frames.net)
    T = cfg.num_frames
    x = torch.randn(2 * T, 3, 16, 16)
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    cond = image.repeat_interleave(T, 0)
    idx = torch.full((2 * T,), 400)
    with torch.no_grad():
        eps = frames(x, idx, fb_cond_frame=cond, fb_class=torch.zeros(2 * T, dtype=torch.long))
    sigma = float(frames._sigma[400])
    x0 = (x - sigma * eps).reshape(2, T, 3, 16, 16)
    assert torch.allclose(x0[:, 0], image, atol=1e-5)
    assert (x0[:, 1] - image).abs().max() > 1e-2
