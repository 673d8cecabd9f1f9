"""scripts/convert_authors_checkpoint.py on a checkpoint laid out as the authors' training script saves it."""
import os
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from cn_clip.clip.model import CLIP
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from models import build_model
from models.backbone import clip_arguments
from utils import checkpoint as ckpt
from utils.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo.yaml")
SCRIPT = os.path.join(REPO, "scripts", "convert_authors_checkpoint.py")
sys.path.insert(0, os.path.join(REPO, "scripts"))

from convert_authors_checkpoint import _model_shapes, convert  # noqa: E402


# Modules with the attribute names of the authors' models/cn_clip_model.py, attention_fusion_model.py,
# xclip.py and text_generation_model.py, so that their state dicts carry the authors' key names.
class ImageCLIP(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.visual_model = clip.visual


class TextCLIP(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip_model = clip
        self.text_model = clip.bert
        self.text_projection = clip.text_projection


class MITBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, max(1, dim // 64))
        self.ln_1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(dim, 4 * dim)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(4 * dim, dim))]))
        self.ln_2 = nn.LayerNorm(dim)


class MultiFrameIntegrationTransformer(nn.Module):
    def __init__(self, frames, dim, layers=1):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(1, frames, dim))
        self.resblocks = nn.Sequential(*[MITBlock(dim) for _ in range(layers)])


class AttentionPooling(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.projection = nn.Linear(2 * dim, 2)


class DocAttentionFusionModel(nn.Module):
    def __init__(self, frames, dim):
        super().__init__()
        self.attention_pooling = AttentionPooling(dim)
        self.video_attention_pooling = MultiFrameIntegrationTransformer(frames, dim)


class GPT2(nn.Module):
    def __init__(self, dim, heads, layers):
        super().__init__()
        self.gpt2_model = GPT2LMHeadModel(GPT2Config(n_embd=dim, n_head=heads, n_layer=layers, n_positions=32,
                                                     vocab_size=21128, add_cross_attention=True,
                                                     bos_token_id=101, eos_token_id=102))


def ddp(module):
    return {f"module.{k}": v for k, v in module.state_dict().items()}


def authors_checkpoint(cfg, frames):
    torch.manual_seed(3)
    clip = CLIP(**clip_arguments(cfg))
    dim, recon = cfg["model"]["embed_dim"], cfg["model"]["recon"]
    return {
        "epoch": 9,
        "state_dict": ddp(ImageCLIP(clip)),
        "doc_text_model": ddp(TextCLIP(clip)),
        "doc_fusion_model": ddp(DocAttentionFusionModel(frames, dim)),
        "text_generation_model": ddp(GPT2(dim, recon["text_heads"], recon["text_layers"])),
        "text_optimizer": {"state": {}, "param_groups": [{"lr": 1e-6, "params": [0]}]},
    }


@pytest.fixture(scope="module")
def demo_cfg():
    return load_config(DEMO)


def test_converted_checkpoint_puts_their_tensors_in_place(demo_cfg, tmp_path):
    theirs = authors_checkpoint(demo_cfg, demo_cfg["data"]["num_frames"])
    src, out = str(tmp_path / "checkpoint.pth.tar"), str(tmp_path / "converted.pth.tar")
    torch.save(theirs, src)
    proc = subprocess.run([sys.executable, SCRIPT, src, out, "--config", DEMO], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = proc.stdout
    assert "not converted, 2 tensors: their fusion" in report and "attention_pooling.projection.weight" in report
    assert "clip_model.visual" in report and "skipped (not model weights): epoch, text_optimizer" in report
    assert "mapped but computed differently: video_pooling.*" in report
    assert "text_recon.decoder.transformer.wpe.weight: (32, 64) -> (12, 64)" in report

    torch.manual_seed(0)
    model = build_model(demo_cfg)
    loaded = ckpt.load_init_weights(model, out)
    assert loaded["problem"] is None
    ours = model.state_dict()
    image, text = theirs["state_dict"], theirs["doc_text_model"]
    fusion, gpt2 = theirs["doc_fusion_model"], theirs["text_generation_model"]
    pairs = {
        "backbone.clip.visual.conv1.weight": image["module.visual_model.conv1.weight"],
        "backbone.clip.visual.proj": image["module.visual_model.proj"],
        "backbone.clip.bert.encoder.layer.0.attention.self.query.weight":
            text["module.clip_model.bert.encoder.layer.0.attention.self.query.weight"],
        "backbone.clip.text_projection": text["module.text_projection"],
        "video_pooling.temporal_embedding": fusion["module.video_attention_pooling.positional_embedding"][0],
        "video_pooling.encoder.layers.0.self_attn.in_proj_weight":
            fusion["module.video_attention_pooling.resblocks.0.attn.in_proj_weight"],
        "video_pooling.encoder.layers.0.linear2.weight":
            fusion["module.video_attention_pooling.resblocks.0.mlp.c_proj.weight"],
        "video_pooling.encoder.layers.0.norm2.bias": fusion["module.video_attention_pooling.resblocks.0.ln_2.bias"],
        "text_recon.decoder.transformer.wpe.weight": gpt2["module.gpt2_model.transformer.wpe.weight"][:12],
        "text_recon.decoder.transformer.h.0.crossattention.c_attn.weight":
            gpt2["module.gpt2_model.transformer.h.0.crossattention.c_attn.weight"],
    }
    for key, expected in pairs.items():
        assert torch.equal(ours[key], expected), key
    # the paper's fusion encoder has no counterpart in their model: it keeps its own initialisation
    assert not any(k.startswith("fusion.") for k in loaded["loaded"])


def test_shape_mismatch_and_unknown_tensors_are_reported_not_dropped(demo_cfg):
    theirs = authors_checkpoint(demo_cfg, frames=5)  # the paper's 5 frames into the demo's 3
    theirs["doc_fusion_model"]["module.extra_head.weight"] = torch.zeros(2)
    shapes = _model_shapes(DEMO)
    state, report = convert(theirs, shapes)
    assert "video_pooling.temporal_embedding" not in state
    assert any("positional_embedding (1, 5, 64) -> video_pooling.temporal_embedding (3, 64)" in m
               for m in report["shape_mismatch"])
    assert report["unknown"] == ["doc_fusion_model:extra_head.weight"]
    mapped = len(report["mapped"])
    accounted = mapped + sum(len(v) for v in report["not_converted"].values()) + len(report["shape_mismatch"]) \
        + len(report["unknown"])
    assert accounted == sum(len(v) for k, v in theirs.items() if k not in ("epoch", "text_optimizer"))


def test_refuses_to_overwrite_and_names_an_unreadable_input(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    proc = subprocess.run([sys.executable, SCRIPT, str(bad), str(tmp_path / "out.pth.tar"), "--config", DEMO],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"{bad}: not a readable PyTorch checkpoint" in proc.stderr
    proc = subprocess.run([sys.executable, SCRIPT, str(bad), str(bad), "--config", DEMO],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "exists; not overwriting it" in proc.stderr
