"""Learning-rate schedule and parameter groups follow the config."""
import os

import pytest
import torch

from main_cross_domain_emb import build_optimizer, build_scheduler, lr_factor, set_schedule_step
from utils.config import load_config

BASE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "base.yaml")


@pytest.mark.parametrize("step,expected", [
    (0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0),   # warm-up over 4 steps
    (4, 1.0), (8, 0.5), (11, 0.125), (12, 0.0), (20, 0.0),  # linear decay to 0 at step 12
])
def test_lr_factor_hand_computed(step, expected):
    assert lr_factor(step, warmup_steps=4, total_steps=12) == pytest.approx(expected)


def test_lr_factor_without_warmup_and_with_warmup_longer_than_run():
    assert [lr_factor(s, 0, 4) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert [lr_factor(s, 10, 4) for s in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.4])


class ThreeParts(torch.nn.Module):
    """A module exposing the model's param_groups interface (visual / recon / other)."""

    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Linear(3, 3)
        self.recon = torch.nn.Linear(3, 3)
        self.other = torch.nn.Linear(3, 1)

    def param_groups(self, cfg):
        t = cfg["train"]
        return [{"name": "visual", "params": list(self.visual.parameters()), "lr": t["lr_visual"]},
                {"name": "recon", "params": list(self.recon.parameters()), "lr": t["lr_recon"]},
                {"name": "other", "params": list(self.other.parameters())}]


@pytest.mark.parametrize("optimizer,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_groups_and_schedule_follow_config(optimizer, cls):
    cfg = load_config(BASE, [f"train.optimizer={optimizer}", "train.lr=2e-3", "train.lr_visual=3e-4",
                                            "train.lr_recon=5e-4", "train.warmup_steps=2", "train.weight_decay=0.1"])
    model = ThreeParts()
    opt = build_optimizer(cfg, model)
    assert type(opt) is cls
    sched = build_scheduler(opt, cfg, total_steps=6)
    base = {"visual": 3e-4, "recon": 5e-4, "other": 2e-3}
    factors = [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    for step, f in enumerate(factors):
        got = {g["name"]: g["lr"] for g in opt.param_groups}
        assert got == pytest.approx({k: v * f for k, v in base.items()}), step
        assert all(g["weight_decay"] == 0.1 for g in opt.param_groups)
        opt.step()
        sched.step()


def test_schedule_is_a_function_of_the_step_only():
    """A scheduler rebuilt and put at step k gives the lrs of the uninterrupted one from then on."""
    cfg = load_config(BASE, ["train.warmup_steps=3"])
    opt_a = build_optimizer(cfg, ThreeParts())
    sched_a = build_scheduler(opt_a, cfg, total_steps=10)
    for _ in range(5):
        opt_a.step()
        sched_a.step()
    opt_b = build_optimizer(cfg, ThreeParts())
    sched_b = build_scheduler(opt_b, cfg, total_steps=10)
    set_schedule_step(opt_b, sched_b, 5, 3, 10)
    for _ in range(3):
        assert [g["lr"] for g in opt_b.param_groups] == [g["lr"] for g in opt_a.param_groups]
        for o, s in ((opt_a, sched_a), (opt_b, sched_b)):
            o.step()
            s.step()
    assert opt_a.param_groups[2]["lr"] == pytest.approx(1e-4 * lr_factor(8, 3, 10))
