"""scripts/convert_authors_checkpoint.py on checkpoints laid out as the authors' training script saves them
(both of their fusion variants), the modules that rebuild their computation, and the evaluator's load."""
import math
import os
import sys
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import yaml
from cn_clip.clip.model import CLIP
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from datasets.annotations import read_raw_lines
from datasets.eval_dataset import authors_video_text
from datasets.frames import authors_centre_indices, segment_indices
from engine.checks import validate_config
from models import backbone_spec, build_model
from models.backbone import clip_arguments
from models.video_pooling import MITPooling
from tests.helpers import REPO_ROOT as REPO
from utils import checkpoint as ckpt
from utils.config import ConfigError, load_config

DEMO = os.path.join(REPO, "configs", "demo.yaml")
sys.path.insert(0, os.path.join(REPO, "scripts"))

import convert_authors_checkpoint as conv  # noqa: E402


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


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


def cn_clip(cfg):
    """cn_clip's CLIP of the config's backbone, random weights."""
    spec = backbone_spec(cfg)
    return CLIP(**clip_arguments(spec.vision_model, spec.text_model, spec.image_size, spec.embed_dim, spec.overrides))


def authors_checkpoint(cfg, frames, clip=None):
    torch.manual_seed(3)
    clip = clip or cn_clip(cfg)
    dim, recon = cfg["model"]["embed_dim"], cfg["model"]["recon"]
    return {
        "epoch": 9,
        "state_dict": ddp(ImageCLIP(clip)),
        "doc_text_model": ddp(TextCLIP(clip)),
        "doc_fusion_model": ddp(DocAttentionFusionModel(frames, dim)),
        "text_generation_model": ddp(GPT2(dim, recon["text_heads"], recon["text_layers"])),
        "text_optimizer": {"state": {}, "param_groups": [{"lr": 1e-6, "params": [0]}]},
    }


def bertx_fusion_state(clip, frames, dim, width, generator):
    """The state dict of their BertXFusionModel (models/xbert_fusion.py) with xbert's key names: a 12-layer
    BERT of which layers 6-11 carry cross-attention, a masked-LM head, prompts_visual_ln, fc_fusion, MIT."""
    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    hidden = clip.bert_config.hidden_size
    state = {f"attention_pooling.bert.{k}": rand(*v.shape) for k, v in clip.bert.state_dict().items()}
    for layer in range(conv.BERTX_FIRST_FUSION_LAYER, 12):
        p = f"attention_pooling.bert.encoder.layer.{layer}.crossattention."
        for name in ("self.query", "self.key", "self.value", "output.dense"):
            state[p + name + ".weight"], state[p + name + ".bias"] = rand(hidden, hidden), rand(hidden)
        state[p + "output.LayerNorm.weight"], state[p + "output.LayerNorm.bias"] = rand(hidden), rand(hidden)
    state["attention_pooling.cls.predictions.bias"] = rand(clip.bert_config.vocab_size)
    state["prompts_visual_ln.weight"], state["prompts_visual_ln.bias"] = rand(width), rand(width)
    state["fc_fusion.weight"], state["fc_fusion.bias"] = rand(dim, hidden), rand(dim)
    state.update({f"video_attention_pooling.{k}": v for k, v in
                  MultiFrameIntegrationTransformer(frames, dim).state_dict().items()})
    return {f"module.{k}": v for k, v in state.items()}


@pytest.fixture(scope="module")
def demo_cfg():
    return load_config(DEMO)


def convert_files(tmp_path, theirs, capsys):
    src, out, cfg = (str(tmp_path / n) for n in ("checkpoint.pth.tar", "converted.pth.tar", "authors.yaml"))
    torch.save(theirs, src)
    assert conv.main([src, out, "--config", DEMO, "--write-config", cfg]) == 0
    return out, cfg, capsys.readouterr().out


def test_attention_variant_converts_into_their_computation(demo_cfg, tmp_path, capsys, mini_root):
    theirs = authors_checkpoint(demo_cfg, demo_cfg["data"]["num_frames"])
    out, cfg_path, report = convert_files(tmp_path, theirs, capsys)
    assert "fusion variant: DocAttentionFusionModel" in report
    assert "clip_model.visual" in report and "skipped (not model weights): epoch, text_optimizer" in report
    assert "text_recon.decoder.transformer.wpe.weight: (32, 64) -> (12, 64)" in report
    assert "no counterpart and no reason" not in report and "unknown" not in report

    written = yaml.safe_load(open(cfg_path))
    assert written["_base_"] == DEMO
    assert written["model"] == {"backbone": {"text_attention_mask": False}, "video": {"pooling": "mit", "mit_layers": 1},
                                "fusion": {"type": "attention"}}
    assert written["data"] == {"preprocess": "authors", "test_frames": "authors", "test_text": "authors_lines",
                               "text_max_len": 90, "num_frames": demo_cfg["data"]["num_frames"]}

    cfg = load_config(cfg_path, [f"data.root={mini_root}"])
    model = build_model(cfg)
    loaded = ckpt.load_model_weights(model, out)
    # exactly the declared tensors are missing: the loss temperature and the vision reconstructor
    assert set(loaded["missing"]) == set(loaded["declared_missing"])
    assert {k.split(".")[0] for k in loaded["declared_missing"]} == {"contrastive", "vision_recon"}
    assert len(ckpt.declared_missing_lines(loaded)) == 2
    ours = model.state_dict()
    image, text = theirs["state_dict"], theirs["doc_text_model"]
    fusion, gpt2 = theirs["doc_fusion_model"], theirs["text_generation_model"]
    mit = "module.video_attention_pooling."
    pairs = {
        "backbone.clip.visual.conv1.weight": image["module.visual_model.conv1.weight"],
        "backbone.clip.bert.encoder.layer.0.attention.self.query.weight":
            text["module.clip_model.bert.encoder.layer.0.attention.self.query.weight"],
        "backbone.clip.text_projection": text["module.text_projection"],
        "backbone.clip.logit_scale": text["module.clip_model.logit_scale"],
        "video_pooling.positional_embedding": fusion[mit + "positional_embedding"],
        "video_pooling.blocks.0.attn.in_proj_weight": fusion[mit + "resblocks.0.attn.in_proj_weight"],
        "video_pooling.blocks.0.attn.out_proj.bias": fusion[mit + "resblocks.0.attn.out_proj.bias"],
        "video_pooling.blocks.0.mlp.0.weight": fusion[mit + "resblocks.0.mlp.c_fc.weight"],
        "video_pooling.blocks.0.mlp.2.bias": fusion[mit + "resblocks.0.mlp.c_proj.bias"],
        "video_pooling.blocks.0.ln_2.weight": fusion[mit + "resblocks.0.ln_2.weight"],
        "fusion.projection.weight": fusion["module.attention_pooling.projection.weight"],
        "fusion.projection.bias": fusion["module.attention_pooling.projection.bias"],
        "text_recon.decoder.transformer.wpe.weight": gpt2["module.gpt2_model.transformer.wpe.weight"][:12],
    }
    for key, expected in pairs.items():
        assert torch.equal(ours[key], expected), key

    # a tensor that is missing without a declared reason stays an error
    stored = torch.load(out, weights_only=True)
    del stored["model"]["backbone.clip.visual.proj"]
    torch.save(stored, tmp_path / "cut.pth.tar")
    with pytest.raises(ckpt.WeightsMismatch, match=r"1 missing \(first: backbone.clip.visual.proj\)"):
        ckpt.load_model_weights(build_model(cfg), str(tmp_path / "cut.pth.tar"))


def test_evaluator_lists_the_declared_tensors_and_refuses_init_from(demo_cfg, tmp_path, capsys, mini_root):
    from evaluate.pipeline import extract

    out, cfg_path, _ = convert_files(tmp_path, authors_checkpoint(demo_cfg, demo_cfg["data"]["num_frames"]), capsys)
    cfg = load_config(cfg_path, [f"data.root={mini_root}", f"output_dir={tmp_path}", f"eval.checkpoint={out}",
                                 "eval.dtype=float32"])
    validate_config(cfg, evaluate=True)
    extract(cfg)
    lines = [line for line in capsys.readouterr().out.splitlines() if "without a counterpart" in line]
    assert len(lines) == 2 and any("contrastive.logit_scale" in line and "temperature" in line for line in lines)
    assert any("vision_recon" in line and "no vision reconstruction" in line for line in lines)

    cfg["init_from"] = out
    with pytest.raises(ConfigError, match=r"init_from=.* initialises training; .* eval.checkpoint \(the CKPT argument"):
        validate_config(cfg, evaluate=True)


def test_bertx_variant_maps_its_fusion_layers(demo_cfg):
    frames = demo_cfg["data"]["num_frames"]
    twelve = load_config(DEMO, ["model.backbone.overrides.text_num_hidden_layers=12"])
    clip = cn_clip(twelve)
    theirs = authors_checkpoint(twelve, frames, clip)
    del theirs["text_generation_model"]  # their checkpoint.pth.tar of some epochs holds none
    width = clip.visual.conv1.out_channels
    theirs["doc_fusion_model"] = bertx_fusion_state(clip, frames, 64, width, torch.Generator().manual_seed(5))
    variant = conv.detect_variant(theirs)
    assert variant == conv.BERTX
    settings = conv.authors_settings(theirs, variant)
    assert settings["model"]["fusion"] == {"type": "fusion", "text_input": "final", "proj_bias": True, "num_layers": 6}
    shapes = conv.model_shapes(DEMO, ["model.backbone.overrides.text_num_hidden_layers=12"]
                                + conv.settings_overrides(settings))
    state, no_counterpart, report = conv.convert(theirs, shapes, variant)
    assert report["unknown"] == [] and report["shape_mismatch"] == [] and report["undeclared"] == []
    assert {k.split(".")[0] for k in no_counterpart} == {"contrastive", "vision_recon", "text_recon"}
    assert no_counterpart["text_recon.decoder.lm_head.weight"].startswith("their checkpoint holds no text generation")
    fusion = theirs["doc_fusion_model"]
    bert = "module.attention_pooling.bert.encoder.layer."
    pairs = {
        "fusion.layers.0.attention.self.query.weight": fusion[bert + "6.attention.self.query.weight"],
        "fusion.layers.5.crossattention.key.bias": fusion[bert + "11.crossattention.self.key.bias"],
        "fusion.layers.2.crossattention.dense.weight": fusion[bert + "8.crossattention.output.dense.weight"],
        "fusion.layers.3.crossattention.LayerNorm.weight": fusion[bert + "9.crossattention.output.LayerNorm.weight"],
        "fusion.layers.4.output.LayerNorm.bias": fusion[bert + "10.output.LayerNorm.bias"],
        "fusion.layers.1.intermediate.dense.weight": fusion[bert + "7.intermediate.dense.weight"],
        "fusion.visual_norm.weight": fusion["module.prompts_visual_ln.weight"],
        "fusion.proj.weight": fusion["module.fc_fusion.weight"],
        "fusion.proj.bias": fusion["module.fc_fusion.bias"],
    }
    for key, expected in pairs.items():
        assert torch.equal(state[key], expected), key
    # every fusion tensor of this model comes from theirs
    assert all(k in state for k in shapes if k.startswith("fusion."))
    reasons = " ".join(report["not_converted"])
    assert "layers 0-5" in reasons and "embeddings" in reasons and "masked-LM head" in reasons
    accounted = len(report["mapped"]) + sum(len(v) for v in report["not_converted"].values())
    assert accounted == sum(len(v) for k, v in theirs.items() if k not in ("epoch", "text_optimizer"))


def test_shape_mismatch_and_unknown_tensors_are_reported_not_dropped(demo_cfg):
    theirs = authors_checkpoint(demo_cfg, frames=5)
    theirs["doc_fusion_model"]["module.extra_head.weight"] = torch.zeros(2)
    theirs["text_generation_model"] = ddp(GPT2(32, 2, 1))  # their --embedding_size, narrower than this model
    shapes = conv.model_shapes(DEMO)  # the paper's model: 3 frames, the FTT, the fusion encoder
    state, no_counterpart, report = conv.convert(theirs, shapes, conv.ATTENTION)
    assert not any(k.startswith("video_pooling.") for k in state)
    assert any("gpt2_model.transformer.wte.weight (21128, 32) -> text_recon.decoder.transformer.wte.weight (21128, 64)"
               in m for m in report["shape_mismatch"])
    assert no_counterpart["text_recon.decoder.transformer.wte.weight"] == conv.RECON_MISFIT
    assert "doc_fusion_model:extra_head.weight" in report["unknown"]
    assert any("video_pooling.positional_embedding (not in this model)" in u for u in report["unknown"])
    assert any(k.startswith("fusion.layers.") for k in report["undeclared"])


def test_refuses_to_overwrite_and_names_an_unreadable_input(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    args = ["--config", DEMO, "--write-config"]
    assert conv.main([str(bad), str(tmp_path / "out.pth.tar"), *args, str(tmp_path / "a.yaml")]) == 2
    assert f"{bad}: not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert conv.main([str(bad), str(tmp_path / "new.pth.tar"), *args, str(bad)]) == 2
    assert f"{bad} exists; not overwriting it" in capsys.readouterr().err


def _layer_norm(x, ln):
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def test_mit_pooling_matches_an_independent_computation():
    torch.manual_seed(0)
    dim, frames = 128, 4  # two heads
    mit = MITPooling(dim, 1, frames).eval()
    for p in mit.parameters():
        nn.init.normal_(p, std=0.3)
    block = mit.blocks[0]
    h = torch.randn(3, frames, dim)

    def reference(h):
        x = h + mit.positional_embedding  # a 1-frame clip broadcasts against the positions
        y = _layer_norm(x, block.ln_1)
        q, k, v = (y @ w.t() + b for w, b in zip(block.attn.in_proj_weight.chunk(3), block.attn.in_proj_bias.chunk(3)))
        heads = [torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(dim // 2), -1) @ vh
                 for qh, kh, vh in zip(q.chunk(2, -1), k.chunk(2, -1), v.chunk(2, -1))]
        x = x + torch.cat(heads, -1) @ block.attn.out_proj.weight.t() + block.attn.out_proj.bias
        z = _layer_norm(x, block.ln_2) @ block.mlp[0].weight.t() + block.mlp[0].bias
        x = x + (z * torch.sigmoid(1.702 * z)) @ block.mlp[2].weight.t() + block.mlp[2].bias
        return (x + h).mean(dim=1)

    with torch.no_grad():
        torch.testing.assert_close(mit(h), reference(h), atol=1e-4, rtol=1e-4)
        goods = h[:, :1]
        torch.testing.assert_close(mit(goods), reference(goods), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(mit(goods), goods[:, 0], atol=1e-2)
        with pytest.raises(ValueError, match="built for 4 frames"):
            mit(h[:, :2])


def _model(*overrides):
    torch.manual_seed(0)
    return build_model(load_config(DEMO, list(overrides))).eval()


def test_attention_fusion_and_unmasked_text_match_an_independent_computation():
    model = _model("model.fusion.type=attention", "model.video.pooling=mit", "model.backbone.text_attention_mask=false")
    nn.init.normal_(model.fusion.projection.weight, std=1.0)
    ids = torch.zeros(2, 24, dtype=torch.long)
    ids[0, :7] = torch.tensor([101, 8, 9, 10, 11, 12, 102])
    ids[1, :4] = torch.tensor([101, 20, 21, 102])
    mask = (ids > 0).long()
    frames = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        out = model.encode_item(frames, ids, mask)
        clip = model.backbone.clip
        # cn_clip's BERT called without a mask on the batch padded to its longest text, as their TextCLIP
        t = clip.bert(ids[:, :7])[0][:, 0] @ clip.text_projection
        v = model.video_pooling(torch.stack([clip.encode_image(f) for f in frames]))
        t, v = F.normalize(t, dim=-1), F.normalize(v, dim=-1)
        w = torch.softmax(model.fusion.projection(torch.cat([t, v], dim=-1)), dim=-1)
        expected = F.normalize(w[:, :1] * t + w[:, 1:] * v, dim=-1)
    torch.testing.assert_close(out["text"], t, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["fused"], expected, atol=1e-5, rtol=1e-4)
    assert w.std() > 0.05  # the two weights differ between the items: the softmax is exercised
    masked = _model("model.fusion.type=attention", "model.video.pooling=mit")
    with torch.no_grad():
        assert not torch.allclose(masked.encode_item(frames, ids, mask)["text"], t, atol=1e-3)


def test_fusion_text_input_final_reads_the_last_text_states():
    final, entry = _model("model.fusion.text_input=final"), _model()
    ids = torch.tensor([[101, 8, 9, 10, 102, 0]])
    mask = (ids > 0).long()
    frames = torch.randn(1, 3, 3, 32, 32)
    with torch.no_grad():
        tokens = final.backbone.encode_frames(frames.flatten(0, 1))[1].view(1, 3, -1, 64)
        states = final.backbone.encode_text(ids, mask)[1]
        expected = F.normalize(final.fusion.proj(final.fusion.encode_tokens(states, mask, tokens)[:, 0]), dim=-1)
        torch.testing.assert_close(final.encode_item(frames, ids, mask)["fused"], expected, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(entry.encode_item(frames, ids, mask)["fused"], expected, atol=1e-3)


def test_their_test_time_frames_and_video_text(tmp_path):
    assert authors_centre_indices(2, 5) == [0, 0, 1, 1, 1] and segment_indices(2, 5) == [0, 1, 1, 1, 1]
    assert authors_centre_indices(10, 5) == [1, 3, 5, 7, 9] == segment_indices(10, 5)
    assert authors_centre_indices(7, 1) == [3]
    path = tmp_path / "v.txt"
    path.write_text("null\n标题\nnull", encoding="utf-8")  # caption, title, text; no final newline
    lines = read_raw_lines(str(path))
    assert lines == ["null\n", "标题\n", "null"]
    # only the last line can equal `null`: the caption line `null\n` stays, the text `null` goes
    assert authors_video_text(lines) == "标题\n|null\n"
    body = "x" * 50
    assert authors_video_text(["cap\n", "t\n", body]) == "t\n|" + "x" * 40 + "|cap\n"
    assert authors_video_text(["cap\n", "same", "same"]) == "same|cap\n"
    assert len(authors_video_text(["c" * 60 + "\n", "t" * 60 + "\n", "b"])) == 80
