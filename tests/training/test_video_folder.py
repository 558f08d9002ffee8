"""The video-folder dataset: clips as frame folders or animations + metadata.csv, labels as classes,
shards equal to the whole batch, clear refusals, and a tiny bridge trained on it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from framebridge_core.errors import ConfigError
from framebridge_core.tiny.format import load_trained
from framebridge_core.training.data.video_folder import VideoFolderDataset
from framebridge_core.training.loop import TrainConfig, train


def _frames(n, seed, w=24, h=20):
    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()) for _ in range(n)]


def _folder(tmp_path, rows=(("walk", "frames", 5), ("surf", "gif", 6), ("jump", "frames", 4))):
    root = tmp_path / "clips"
    root.mkdir()
    table = []
    for i, (label, kind, n) in enumerate(rows):
        imgs = _frames(n, i)
        if kind == "frames":
            d = root / f"clip{i}"
            d.mkdir()
            for j, im in enumerate(imgs):
                im.save(d / f"{j:03d}.png")
            name = d.name
        else:
            name = f"clip{i}.gif"
            imgs[0].save(root / name, save_all=True, append_images=imgs[1:], duration=100, loop=0)
        table.append({"video": name, "caption": f"a {label}", "label": label})
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["video", "caption", "label"])
        w.writeheader()
        w.writerows(table)
    return root


def test_clips_labels_and_shards(tmp_path):
    ds = VideoFolderDataset(_folder(tmp_path), size=16, frames=4)
    assert ds.motions == ("jump", "surf", "walk") and ds.labels.tolist() == [2, 1, 0]
    clip = ds.clip(0)
    assert clip.shape == (4, 3, 16, 16) and clip.min() >= -1 and clip.max() <= 1
    # frame 0 of the folder clip: centre-cropped 20x20 then resized to 16
    ref = torch.tensor(np.array(_frames(5, 0)[0].crop((2, 0, 22, 20)))).permute(2, 0, 1)
    assert float((clip[0] - (torch.nn.functional.interpolate(ref[None].float() / 255, size=(16, 16), mode="bilinear",
                                                              antialias=True)[0] * 2 - 1)).abs().max()) < 1e-5
    video, labels = ds.sample_batch(6, torch.Generator().manual_seed(1))
    plan = ds.draw_plan(6, torch.Generator().manual_seed(1))
    parts = [ds.render_plan(plan, lo, lo + 2) for lo in (0, 2, 4)]
    assert torch.equal(torch.cat([p[0] for p in parts]), video) and torch.equal(torch.cat([p[1] for p in parts]), labels)


def test_refusals_name_the_problem(tmp_path):
    root = _folder(tmp_path)
    with pytest.raises(ConfigError, match="has 4 frames; frames=5 with stride=1 needs 5"):
        VideoFolderDataset(root, size=16, frames=5).clip(2)
    with pytest.raises(ConfigError, match="no metadata.csv"):
        VideoFolderDataset(tmp_path, size=16, frames=4)
    (root / "metadata.csv").write_text("video,label\nmissing.mp4,x\n")
    with pytest.raises(ConfigError, match="missing.mp4 does not exist"):
        VideoFolderDataset(root, size=16, frames=4).clip(0)
    with pytest.raises(ConfigError, match="frames=0 is invalid"):
        VideoFolderDataset(root, size=16, frames=0)


def test_a_tiny_bridge_trains_on_a_video_folder_with_its_labels_as_classes(tmp_path):
    root = _folder(tmp_path)
    cfg = TrainConfig(kind="bridge", preset="smoke", data=str(root), out=str(tmp_path / "run"), steps=2, batch=2,
                      precision="fp32", warmup=1, log_every=1000)
    path = train(cfg)
    net, meta = load_trained(str(path))
    assert json.loads(meta["framebridge.classes"]) == ["jump", "surf", "walk"]
    assert meta["framebridge.data"].startswith("video folder clips (3 clips)")
    assert net.config.num_classes == 3
