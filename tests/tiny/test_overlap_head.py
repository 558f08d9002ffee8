"""The overlap-add unpatchify of the tiny models (``LatteConfig.head_overlap``, docs/notes/tiny-model.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from framebridge_core.errors import ConfigError
from framebridge_core.families.latte.checkpoint import DETECTOR
from framebridge_core.families.latte.network import LatteConfig, LatteModel, LatteNeuralPrior
from framebridge_core.tiny.format import META_PREFIX, load_trained, network_config, read_weights
from framebridge_core.training.head_finetune import head_forward, trunk, with_overlap
from framebridge_core.training.loop import add_conv_head

PRETRAINED = Path(__file__).resolve().parents[2] / "pretrained"


def _cfg(**kw) -> LatteConfig:
    base = dict(input_size=16, patch_size=4, in_channels=3, out_channels=3, hidden_size=48, depth=2,
                num_heads=2, num_frames=4, num_classes=3, output="x0", head_width=8, head_features=4)
    return LatteConfig(**dict(base, **kw))


def _randomised(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net.eval()


def test_overlap_config_is_checked_and_old_configs_default_to_none():
    with pytest.raises(ConfigError, match="head_overlap=True needs an even patch_size"):
        _cfg(patch_size=1, input_size=15, head_overlap=True)
    old = _cfg().to_dict()
    del old["head_overlap"]  # a config exported before the field existed
    assert LatteConfig.from_dict(old).head_overlap is False
    assert network_config("bridge-np", "tiny", 9, "x0").head_overlap is True
    assert network_config("bridge", "bench", 9).head_overlap is False


def test_a_file_without_overlap_warm_starts_it_exactly():
    old = _randomised(LatteModel(_cfg()))
    new = LatteModel(_cfg(head_overlap=True)).eval()
    new.load_state_dict(add_conv_head(old.state_dict(), new))
    assert new.final_layer.overlap.weight.shape == (48, 7, 8, 8)
    x, t, y = torch.randn(2, 5, 3, 16, 16), torch.tensor([5, 700]), torch.tensor([0, 2])
    with torch.no_grad():
        a, b = old(x, t, y), new(x.clone(), t, y)
        assert torch.equal(a, b)
        new.final_layer.overlap.weight.normal_(0, 0.05)
        c = new(x, t, y)
    # a token now paints beyond its own 4x4 patch: changing one token's input changes pixels of the neighbours
    diff = (c - a).abs().amax(dim=(0, 1, 2))
    assert diff.min() > 0


def test_the_overlap_reaches_across_patch_boundaries():
    net = _randomised(LatteModel(_cfg(head_overlap=True, head_width=0, head_features=0)))
    m = torch.zeros(1, 1, 16, 48)
    m[0, 0, 5] = 1.0  # token (1, 1) of the 4x4 grid: pixels 4..7
    with torch.no_grad():
        painted = net.final_layer.paint(m, 4)[0, 0].abs().sum(0)
    rows = painted.sum(1).nonzero().flatten().tolist()
    assert rows == list(range(2, 10))  # the 2p window [i*p - p/2, i*p + 3p/2)


def test_head_forward_on_the_trunk_equals_the_network():
    net = _randomised(LatteModel(_cfg(head_overlap=True)))
    x, t, y = torch.randn(2, 5, 3, 16, 16), torch.tensor([5, 700]), torch.tensor([0, 2])
    with torch.no_grad():
        full = net(x, t, y)
        m, o = trunk(net, x, t, y)
        parts = head_forward(net, m.flatten(0, 1), o.flatten(0, 1), x.flatten(0, 1))
    assert torch.allclose(parts.reshape(full.shape), full, atol=1e-5)


def test_the_detector_reads_the_overlap():
    cfg = _cfg(head_overlap=True)
    sd = _randomised(LatteModel(cfg)).state_dict()
    info = DETECTOR.detect(sd, {"framebridge.predicts": "x0", "framebridge.num_heads": "2"})
    assert info.config == cfg
    sd.pop("final_layer.overlap.weight")
    assert DETECTOR.detect(sd, {"framebridge.predicts": "x0", "framebridge.num_heads": "2"}).config.head_overlap is False


@pytest.mark.parametrize("name", ["framebridge-tiny-motion.safetensors", "neural-prior-tiny-motion.safetensors",
                                  "framebridge-tiny-motion-np.safetensors"])
def test_shipped_files_load_and_their_metadata_states_the_head(name):
    net, meta = load_trained(str(PRETRAINED / name))
    cfg = json.loads(meta[META_PREFIX + "config"])
    inner = net.nwarp_model if isinstance(net, LatteNeuralPrior) else net
    assert inner.config.head_overlap is bool(cfg.get("head_overlap", False))
    assert (inner.final_layer.overlap is not None) is inner.config.head_overlap
    sd, _ = read_weights(str(PRETRAINED / name))
    assert ("final_layer.overlap.weight" in sd) is inner.config.head_overlap


def test_a_shipped_file_plus_a_zero_overlap_is_the_same_model():
    # the neural prior before this change (in git history the bundled file had no overlap): adding it is exact
    path = str(PRETRAINED / "neural-prior-tiny-motion.safetensors")
    old, _ = load_trained(path)
    new, _, kind = with_overlap(path)
    assert kind == "neural-prior"
    with torch.no_grad():
        new.nwarp_model.final_layer.overlap.weight.zero_()
        frame = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
        assert torch.equal(old(frame, torch.tensor([3])), new.eval()(frame, torch.tensor([3])))
