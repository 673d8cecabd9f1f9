"""Learning-rate schedule and parameter groups follow the config."""
import logging
import os

import pytest
import torch

from engine.trainer import build_optimizer, startup_report
from utils.config import load_config
from utils.schedule import LinearWarmupDecay, lr_factor, warmup_steps_for

BASE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "base.yaml")
REAL400K = os.path.join(os.path.dirname(BASE), "qcd_real400k.yaml")


@pytest.mark.parametrize("step,expected", [
    (0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0),   # warm-up over 4 steps
    (4, 1.0), (8, 0.5), (11, 0.125), (12, 0.0), (20, 0.0),  # linear decay to 0 at step 12
])
def test_lr_factor_hand_computed(step, expected):
    assert lr_factor(step, warmup_steps=4, total_steps=12) == pytest.approx(expected)


def test_lr_factor_without_warmup_and_with_warmup_longer_than_run():
    assert [lr_factor(s, 0, 4) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert [lr_factor(s, 10, 4) for s in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("ratio,total,expected", [(0.05, 390, 20), (0.05, 400, 20), (0.0, 390, 0), (0.01, 985, 10),
                                                  (0.1, 5, 1)])
def test_warmup_is_a_share_of_the_run(ratio, total, expected):
    assert warmup_steps_for(ratio, total) == expected


def test_paper_schedule_decays():
    """~100,000 queries, 80 per GPU on 32 GPUs: 39 steps per epoch, 390 in all. The lr must peak
    early and reach (nearly) 0 at the end, as §5.1's linear decay says."""
    cfg = load_config(REAL400K)
    t = cfg["train"]
    steps_per_epoch = 100_000 // (t["batch_size"] * 32)
    total = steps_per_epoch * t["epochs"]
    assert total == 390
    sched = LinearWarmupDecay([t["lr"]], warmup_steps_for(t["warmup_ratio"], total), total)
    lrs = [sched.lrs(step)[0] for step in range(total)]
    peak = max(range(total), key=lrs.__getitem__)
    assert peak < total // 10 and lrs[peak] == pytest.approx(t["lr"])
    assert lrs[total // 2] == pytest.approx(t["lr"] * (total - total // 2) / (total - sched.warmup_steps))
    assert lrs[-1] < 0.01 * t["lr"]


class Parts(torch.nn.Module):
    """A module exposing the models' param_groups interface: one named group per part."""

    def __init__(self, names=("visual", "recon", "other")):
        super().__init__()
        self.parts = torch.nn.ModuleDict({name: torch.nn.Linear(3, 3) for name in names})

    def param_groups(self):
        return [{"name": name, "params": list(part.parameters())} for name, part in self.parts.items()]



@pytest.mark.parametrize("optimizer,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_groups_and_schedule_follow_config(optimizer, cls):
    cfg = load_config(BASE, [f"train.optimizer={optimizer}", "train.lr=2e-3", "train.lr_visual=3e-4",
                             "train.lr_recon=5e-4", "train.warmup_ratio=0.3", "train.weight_decay=0.1"])
    model = Parts()
    opt = build_optimizer(cfg, model)
    assert type(opt) is cls
    sched = LinearWarmupDecay.for_optimizer(opt, cfg["train"]["warmup_ratio"], total_steps=6)
    assert sched.warmup_steps == 2
    base = {"visual": 3e-4, "recon": 5e-4, "other": 2e-3}
    factors = [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    for step, f in enumerate(factors):
        sched.apply(opt, step)
        got = {g["name"]: g["lr"] for g in opt.param_groups}
        assert got == pytest.approx({k: v * f for k, v in base.items()}), step
        assert all(g["weight_decay"] == 0.1 for g in opt.param_groups)
        opt.step()


@pytest.mark.parametrize("lr_new,new", [("null", 2e-3), ("7e-4", 7e-4)])
def test_each_group_name_takes_its_rate(lr_new, new):
    cfg = load_config(BASE, ["train.lr=2e-3", "train.lr_visual=3e-4", f"pretrain.lr_new={lr_new}",
                             "train.weight_decay=0.05"])
    opt = build_optimizer(cfg, Parts(("visual", "text", "new")))  # the pre-training model's groups
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        ("visual", 3e-4, 0.05), ("text", 2e-3, 0.05), ("new", new, 0.05)]


def test_schedule_restored_from_its_state_or_a_lambdalr_state_gives_the_same_lrs():
    cfg = load_config(BASE, ["train.lr=2e-3", "train.lr_visual=3e-4", "train.lr_recon=5e-4"])
    opt = build_optimizer(cfg, Parts())
    sched = LinearWarmupDecay.for_optimizer(opt, 0.3, total_steps=10)
    lambdalr = torch.optim.lr_scheduler.LambdaLR(build_optimizer(cfg, Parts()), lambda step: 0.5)
    for state in (sched.state_dict(), lambdalr.state_dict()):
        other = build_optimizer(load_config(BASE), Parts())  # other base lrs until the state is loaded
        restored = LinearWarmupDecay.for_optimizer(other, 0.3, total_steps=10)
        restored.load_base_lrs(state)
        for step in range(5, 10):
            assert restored.apply(other, step) == sched.apply(opt, step)
            assert [g["lr"] for g in other.param_groups] == [g["lr"] for g in opt.param_groups]
    with pytest.raises(ValueError, match="2 parameter groups, the model has 3"):
        sched.load_base_lrs({"base_lrs": [1.0, 2.0]})


@pytest.mark.parametrize("ratio,warns", [(0.05, False), (0.4, True)])
def test_startup_report_states_the_schedule(caplog, ratio, warns):
    cfg = load_config(BASE, [f"train.warmup_ratio={ratio}"])
    opt = build_optimizer(cfg, Parts())
    sched = LinearWarmupDecay.for_optimizer(opt, ratio, total_steps=390)
    with caplog.at_level(logging.INFO, logger="qcd"):
        startup_report(cfg, 32, [39] * 10, sched, opt, torch.device("cpu"))
    text = caplog.text
    assert f"steps per epoch 39-39, epochs 10, total steps 390, warm-up {warmup_steps_for(ratio, 390)} steps" in text
    assert ("more than a third" in text) == warns
