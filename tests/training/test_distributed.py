"""Training on several processes (torch.distributed, gloo on CPU): the same parameters as one process on
the same global batch, only rank 0 writes, and a 2-process state.pt resumes on 1 process."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from framebridge_core.errors import ConfigError
from framebridge_core.tiny.format import PRESETS
from framebridge_core.training.data.camera_motion import CameraMotionDataset
from framebridge_core.training.distributed import DistEnv, check_global_batch, setup, shard_bounds
from framebridge_core.training.loop import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")

TOL = 1e-6


def _data():
    p = PRESETS["smoke"]
    return CameraMotionDataset("train", size=p["size"], frames=p["frames"], seed=0, include=("textures",),
                               num_textures=6)


def _cfg(out, **kw):
    base = dict(kind="bridge", preset="smoke", out=str(out), steps=2, batch=4, lr=1e-3, warmup=2, precision="fp32",
                ckpt_every=100, log_every=1000, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, workdir: str, kw: dict, resume: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    # every rank in its own working directory with a relative --out: a file written by rank 1 would land
    # in its folder, which must stay empty
    os.chdir(Path(workdir) / f"rank{rank}")
    torch.set_num_threads(1)
    train(_cfg("run", **kw), dataset=_data(), resume=resume)


def _launch(tmp_path: Path, world: int, resume: bool = False, **kw) -> Path:
    for r in range(world):
        (tmp_path / f"rank{r}").mkdir(parents=True, exist_ok=True)
    mp.start_processes(_worker, args=(world, _free_port(), str(tmp_path), kw, resume), nprocs=world,
                       join=True, start_method="spawn")
    return tmp_path / "rank0" / "run"


def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / "state.pt", weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _losses(st):
    return [v for _, v, _ in st["log"]]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, global batch 4: the state after 2 steps, and after 4 (resumed at 2)."""
    out = tmp_path_factory.mktemp("single") / "a"
    data = _data()
    train(_cfg(out), dataset=data)
    half = _state(out)
    train(_cfg(out, steps=4), dataset=data, resume=True)
    return half, _state(out)


def test_two_processes_equal_one_process_on_the_same_global_batch_and_only_rank_0_writes(tmp_path, single):
    half, full = single
    run = _launch(tmp_path, 2, batch=2)                       # 2 processes x 2 clips = the global batch of 4
    st = _state(run)
    assert st["step"] == 2 and st["global_batch"] == 4 and st["world_size"] == 2
    assert _max_diff(st["model"], half["model"]) <= TOL
    assert _max_diff(st["ema"], half["ema"]) <= TOL
    for (a, b) in zip(_losses(st), _losses(half)):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b))
    assert sorted(p.name for p in run.iterdir()) == ["loss.csv", "model.safetensors", "state.pt"]
    assert list((tmp_path / "rank1").rglob("*")) == []       # rank 1 wrote nothing, not even the run folder

    # the 2-process state resumes on 1 process (global batch 4 = 1 x 4) and continues as the 1-process run
    again = tmp_path / "resumed"
    shutil.copytree(run, again)
    train(_cfg(again, steps=4), dataset=_data(), resume=True)
    resumed = _state(again)
    assert resumed["step"] == 4
    assert _max_diff(resumed["model"], full["model"]) <= TOL
    assert _max_diff(resumed["ema"], full["ema"]) <= TOL


def test_accumulation_and_a_2_process_resume_follow_the_same_run(tmp_path, single):
    """1 clip per process x 2 processes x 2 accumulation steps = the same global batch of 4; this run is
    resumed from the 1-process state after 2 steps."""
    half, full = single
    start = tmp_path / "rank0" / "run"
    start.mkdir(parents=True)
    torch.save(half, start / "state.pt")
    run = _launch(tmp_path, 2, resume=True, batch=1, accum=2, steps=4)
    st = _state(run)
    assert st["step"] == 4 and st["global_batch"] == 4
    assert _max_diff(st["model"], full["model"]) <= TOL
    assert _max_diff(st["ema"], full["ema"]) <= TOL


def test_a_different_global_batch_is_refused_on_resume(tmp_path, single):
    half, _ = single
    (tmp_path / "r").mkdir()
    torch.save(half, tmp_path / "r" / "state.pt")
    with pytest.raises(ConfigError, match="global batch of 4.*batch x processes x accum = 4"):
        train(_cfg(tmp_path / "r", steps=4, batch=2), dataset=_data(), resume=True)


def test_shards_cover_the_global_batch_once_in_a_fixed_order():
    rows = []
    for micro in range(3):
        for rank in range(2):
            lo, hi = shard_bounds(12, DistEnv(rank=rank, world_size=2), micro, 3)
            rows.extend(range(lo, hi))
    assert rows == list(range(12))
    assert check_global_batch(2, 4, 3) == 24
    with pytest.raises(ConfigError, match="--accum 0"):
        check_global_batch(2, 4, 0)


def test_a_broken_launch_environment_is_explained(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR, MASTER_PORT is not set.*torchrun"):
        setup("cpu")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigError, match="RANK=5 and WORLD_SIZE=2"):
        setup("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two' is not an integer"):
        setup("cpu")


def test_fsdp_shards_the_same_run_and_its_state_resumes_anywhere(tmp_path, single):
    """FSDP (parameters, gradients and optimiser state sharded over 2 processes) gives the 1-process
    parameters; its state.pt holds whole tensors, so it resumes on 1 process."""
    half, full = single
    run = _launch(tmp_path, 2, batch=2, fsdp=True)
    st = _state(run)
    assert _max_diff(st["model"], half["model"]) <= TOL
    assert _max_diff(st["ema"], half["ema"]) <= TOL
    mine, ref = st["optimizer"]["state"], half["optimizer"]["state"]
    assert mine.keys() == ref.keys()
    for i in ref:   # whole (gathered) Adam moments, numbered as on one process
        assert float((mine[i]["exp_avg"] - ref[i]["exp_avg"]).abs().max()) <= TOL
    assert list((tmp_path / "rank1").rglob("*")) == []
    train(_cfg(run, steps=4, fsdp=True), dataset=_data(), resume=True)   # one process: fsdp changes nothing
    assert _max_diff(_state(run)["model"], full["model"]) <= TOL
