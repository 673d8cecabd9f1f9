"""The learning rates of the shipped pre-training configs: what is read from Chinese-CLIP trains at most at
1e-4 (visual tower 1e-5), only what pre-training initialises above it. Which parameters are copies is found
from their values: the towers load a checkpoint whose every tensor is random."""
import os

import pytest
import torch

from engine.checks import validate_config
from engine.trainer import build_optimizer
from models import backbone_spec, build_pretrain_model
from models.backbone import CNClipBackbone
from tests.helpers import REPO_ROOT, TINY
from utils.config import ConfigError, load_config

CONFIGS = os.path.join(REPO_ROOT, "configs")
# group -> lr of each shipped config, the authors' base 1e-2 times their factors (text 1e-2, image 1e-3, new 1)
EXPECTED = {
    "pretrain_real400k.yaml": {"visual": 1e-5, "text": 1e-4, "new": 1e-2},
    "pretrain_real400k_stage2.yaml": {"text": 1e-4, "new": 1e-2},  # the towers are frozen
}


@pytest.fixture(scope="module")
def cn_clip_checkpoint(tmp_path_factory):
    """A tiny cn_clip checkpoint in the release layout whose tensors are all random (LayerNorms included), so
    that a parameter equal to one of them was copied from it."""
    cfg = load_config(os.path.join(CONFIGS, "pretrain_real400k.yaml"), TINY + ["model.backbone.pretrained=null"])
    generator = torch.Generator().manual_seed(0)
    clip = CNClipBackbone(backbone_spec(cfg)).clip
    state = {k: torch.randn(v.shape, generator=generator) for k, v in clip.state_dict().items()}
    path = tmp_path_factory.mktemp("cn_clip") / "tiny_cn_clip.pt"
    torch.save({"state_dict": state}, path)
    return str(path), list(state.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_pretraining_rates_keep_chinese_clip_weights_at_fine_tuning_rates(name, cn_clip_checkpoint, mini_root):
    path, released = cn_clip_checkpoint
    # data.root: stage 2 reads the entity prompts of the mini dataset
    cfg = load_config(os.path.join(CONFIGS, name),
                      TINY + [f"model.backbone.pretrained={path}", f"data.root={mini_root}"])
    model = build_pretrain_model(cfg)
    groups = build_optimizer(cfg, model).param_groups
    assert {g["name"]: g["lr"] for g in groups} == pytest.approx(EXPECTED[name])
    assert [g["name"] for g in model.param_groups()] == list(EXPECTED[name])

    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(len(g["params"]) for g in groups) == len(lr_of) == len(trainable)  # each in exactly one group
    copied = {n for n, p in trainable.items()
              if any(t.shape == p.shape and torch.equal(t, p.detach()) for t in released)}
    assert any(n.startswith("fusion.layers.") for n in copied)  # the fusion encoder's copies of text layers
    for n in copied:
        assert lr_of[id(trainable[n])] <= (1e-5 if n.startswith("backbone.clip.visual.") else 1e-4), n
    new = {id(p) for g in groups if g["name"] == "new" for p in g["params"]}
    assert new == {id(p) for n, p in trainable.items() if n not in copied}
    assert any(n.startswith("fusion.") for n in trainable if n not in copied)  # cross-attention at the high rate


def test_lr_new_defaults_to_train_lr(mini_root):
    cfg = load_config(os.path.join(CONFIGS, "demo_pretrain.yaml"), TINY + [f"data.root={mini_root}"])
    assert cfg["pretrain"]["lr_new"] is None
    rates = {g["name"]: g["lr"] for g in build_optimizer(cfg, build_pretrain_model(cfg)).param_groups}
    assert rates == {"visual": cfg["train"]["lr_visual"], "text": cfg["train"]["lr"], "new": cfg["train"]["lr"]}


def test_a_negative_lr_new_is_refused():
    cfg = load_config(os.path.join(CONFIGS, "demo_pretrain.yaml"), ["pretrain.lr_new=-1.0"])
    with pytest.raises(ConfigError, match=r"pretrain.lr_new=-1.0: expected null \(train.lr\) or a learning rate >= 0"):
        validate_config(cfg)
