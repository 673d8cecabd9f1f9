"""Checkpoints: atomic writes, rotation, skipping damaged files, RNG state, loading weights."""
import os
import random
import subprocess
import textwrap

import numpy as np
import pytest
import torch

from utils import checkpoint as ckpt
from utils.seed import get_rng_state, set_rng_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(step, value=0.0):
    return {"model": {"w": torch.full((3,), float(step) + value)}, "optimizer": {}, "scaler": {}, "scheduler": {},
            "epoch": 0, "step_in_epoch": step, "global_step": step, "rng": [get_rng_state()], "config": {"seed": 1},
            "world_size": 1, "batch_size": 2, "epoch_lengths": [10]}


def test_save_rotates_and_points_latest_at_newest(tmp_path):
    for step in (2, 4, 6, 8):
        path = ckpt.save_checkpoint(_state(step), str(tmp_path), keep_last=2)
        assert os.path.basename(path) == f"checkpoint_{step:08d}.pth.tar"
    names = sorted(os.listdir(tmp_path))
    assert names == ["checkpoint_00000006.pth.tar", "checkpoint_00000008.pth.tar", "checkpoint_latest.pth.tar"]
    latest = ckpt.load_checkpoint(str(tmp_path / ckpt.LATEST))
    assert latest["global_step"] == 8 and torch.equal(latest["model"]["w"], torch.full((3,), 8.0))


def test_truncated_checkpoints_are_skipped(tmp_path):
    for step in (1, 2):
        ckpt.save_checkpoint(_state(step), str(tmp_path), keep_last=5)
    # a copy cut short (e.g. a node lost while rsyncing): both the step file and latest are damaged
    for name in ("checkpoint_00000002.pth.tar", ckpt.LATEST):
        p = tmp_path / name
        os.unlink(p)  # latest may be a hard link of step 2: break the link before damaging it
        torch.save(_state(2), p)
        with open(p, "r+b") as f:
            f.truncate(os.path.getsize(p) - 100)
    path, state = ckpt.find_latest_valid(str(tmp_path))
    assert path.endswith("checkpoint_00000001.pth.tar") and state["global_step"] == 1


def test_checkpoint_without_training_state_is_skipped(tmp_path):
    ckpt.save_checkpoint(_state(1), str(tmp_path), keep_last=5)
    torch.save({"model": {"w": torch.zeros(3)}}, tmp_path / "checkpoint_00000003.pth.tar")
    path, state = ckpt.find_latest_valid(str(tmp_path))
    assert state["global_step"] == 1


def test_kill_during_write_leaves_previous_checkpoint_intact(tmp_path, killed_at_checkpoint):
    script = textwrap.dedent(f"""
        import torch
        from utils import checkpoint as ckpt
        for step in (1, 2):
            ckpt.save_checkpoint({{"model": {{"w": torch.full((1000,), float(step))}}, "optimizer": {{}}, "scaler": {{}},
                                  "scheduler": {{}}, "epoch": 0, "step_in_epoch": step, "global_step": step,
                                  "rng": [], "config": {{}}, "world_size": 1, "batch_size": 2, "epoch_lengths": [10]}},
                                 {str(tmp_path)!r}, keep_last=3)
    """)
    proc = subprocess.run(killed_at_checkpoint(2, "-c", script), capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    names = sorted(os.listdir(tmp_path))
    assert names == ["checkpoint_00000001.pth.tar", "checkpoint_00000002.pth.tar.tmp", "checkpoint_latest.pth.tar"]
    path, state = ckpt.find_latest_valid(str(tmp_path))
    assert state["global_step"] == 1 and torch.equal(state["model"]["w"], torch.full((1000,), 1.0))
    # the next save of that step succeeds over the stale temporary file
    ckpt.save_checkpoint(_state(2), str(tmp_path), keep_last=3)
    assert not any(n.endswith(".tmp") for n in os.listdir(tmp_path))
    assert ckpt.find_latest_valid(str(tmp_path))[1]["global_step"] == 2


def test_resolve_resume(tmp_path):
    assert ckpt.resolve_resume(None, str(tmp_path)) == (None, None)
    assert ckpt.resolve_resume("auto", str(tmp_path)) == (None, None)
    with pytest.raises(FileNotFoundError, match="nope.pth.tar"):
        ckpt.resolve_resume(str(tmp_path / "nope.pth.tar"), str(tmp_path))
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="bad.pth.tar is not a readable training checkpoint"):
        ckpt.resolve_resume(str(bad), str(tmp_path))
    path = ckpt.save_checkpoint(_state(3), str(tmp_path), keep_last=1)
    assert ckpt.resolve_resume(path, str(tmp_path))[1]["global_step"] == 3


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    torch.save(get_rng_state(), tmp_path / "rng.pt")
    first = (random.random(), np.random.randn(3).tolist(), torch.randn(3).tolist())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.randn(3).tolist(), torch.randn(3).tolist())
    assert first == again


class Net(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.a = torch.nn.Linear(4, width)
        self.b = torch.nn.Linear(width, 2)


def test_load_model_weights_strips_ddp_prefix(tmp_path):
    src = Net()
    torch.save({"model": {"module." + k: v for k, v in src.state_dict().items()}}, tmp_path / "c.pth.tar")
    dst = Net()
    report = ckpt.load_model_weights(dst, str(tmp_path / "c.pth.tar"))
    assert report["missing"] == [] and len(report["loaded"]) == 4
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_state_dict_of_finds_the_tensors_of_each_layout():
    w = torch.zeros(2)
    assert ckpt.state_dict_of({"model": {"module.w": w}, "state_dict": {"x": w}}) == {"w": w}  # ours first
    assert ckpt.state_dict_of({"epoch": 3, "state_dict": {"module.visual.w": w}}) == {"visual.w": w}  # CyCLIP's
    assert ckpt.state_dict_of({"w": w}) == {"w": w}  # a bare state dict
    assert ckpt.state_dict_of({"model": {"w": w}}, keys=("state_dict",)) is None  # a mapping of mappings
    assert ckpt.state_dict_of({"state_dict": {"w": 1.0}}) is None and ckpt.state_dict_of([w]) is None


def test_load_model_weights_reports_what_it_did_not_load(tmp_path):
    src = Net(width=4)
    state = dict(src.state_dict(), extra=torch.zeros(1))
    torch.save({"state_dict": state}, tmp_path / "c.pth.tar")
    dst = Net(width=5)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ckpt.WeightsMismatch, match=r"does not fit the model of this config: 1 unexpected \(first: extra\); "
                       r"3 mismatched \(first: a.bias: checkpoint \(4,\) vs model \(5,\), a.weight"):
        ckpt.load_model_weights(dst, str(tmp_path / "c.pth.tar"))
    report = ckpt.load_model_weights(dst, str(tmp_path / "c.pth.tar"), strict=False)
    # a.weight [4,4] vs [5,4], a.bias [4] vs [5], b.weight [2,4] vs [2,5] differ; only b.bias fits
    assert report["loaded"] == ["b.bias"]
    assert report["unexpected"] == ["extra"]
    assert sorted(report["missing"]) == ["a.bias", "a.weight", "b.weight"]
    assert report["mismatched"][0] == "a.bias: checkpoint (4,) vs model (5,)"
    assert torch.equal(dst.b.bias, src.b.bias) and torch.equal(dst.a.weight, before["a.weight"])


def test_load_model_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ckpt.load_model_weights(Net(), str(tmp_path / "missing.pth"))
    torch.save({"something": 1}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="odd.pth: expected a checkpoint with a 'model' or 'state_dict'"):
        ckpt.load_model_weights(Net(), str(tmp_path / "odd.pth"))


# ---------------------------------------------------------------- init_from


def four_layers(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(*[torch.nn.Linear(3, 3) for _ in range(4)])  # 8 tensors


def test_init_from_the_same_model_loads_every_tensor(tmp_path):
    path = str(tmp_path / "same.pth.tar")
    source = four_layers(seed=1)
    torch.save({"model": source.state_dict()}, path)
    target = four_layers(seed=2)
    report = ckpt.load_init_weights(target, path)
    assert len(report["loaded"]) == 8 and report["problem"] is None
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)


@pytest.mark.parametrize("keys,found", [(("other.weight", "other.bias"), 0), (("0.weight", "0.bias", "1.weight"), 3)])
def test_init_from_filling_under_half_of_the_model_is_an_error_naming_keys(tmp_path, keys, found):
    path = str(tmp_path / "partial.pth.tar")
    state = {k: torch.ones(3, 3) if k.endswith("weight") else torch.ones(3) for k in keys}
    torch.save({"state_dict": state}, path)
    target = four_layers()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ckpt.WeightsMismatch) as err:
        ckpt.load_init_weights(target, path)
    message = str(err.value)
    assert path in message and f"{found} of the model's 8 tensors found" in message
    assert "'3.weight'" in message and "init_strict=false" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing loaded

    report = ckpt.load_init_weights(target, path, strict=False)
    assert report["problem"] and len(report["loaded"]) == found
    if found:
        assert torch.equal(target.state_dict()["0.weight"], torch.ones(3, 3))


def test_a_file_that_is_not_a_checkpoint_names_the_path(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a checkpoint\n")
    for load in (ckpt.load_init_weights, ckpt.load_model_weights):
        with pytest.raises(ValueError, match=f"{path}: not a PyTorch checkpoint"):
            load(four_layers(), str(path))


def test_training_with_a_mismatched_init_from_stops_with_one_line(tmp_path, mini_root, capsys):
    import main_cross_domain_emb as entry

    path = str(tmp_path / "foreign.pth.tar")
    torch.save({"model": four_layers().state_dict()}, path)
    demo = os.path.join(REPO, "configs", "demo.yaml")
    argv = ["--config", demo, f"output_dir={tmp_path / 'out'}", f"data.root={mini_root}", f"init_from={path}"]
    assert entry.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: init_from={path}: 0 of the model's") and "init_strict=false" in err
