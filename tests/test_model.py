"""The QCD model (paper §4.3): backbone loading, fusion, reconstruction heads, gradients, learning."""
import os

import pytest
import torch
import torch.nn.functional as F

from engine.checks import validate_config
from engine.trainer import build_optimizer
from models import backbone_spec, build_model
from models.backbone import CNClipBackbone
from tests.helpers import REPO_ROOT, TINY
from utils.config import ConfigError, load_config

BASE = os.path.join(REPO_ROOT, "configs", "base.yaml")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # tiny models; a shared CPU is faster without thread contention


def tiny_cfg(*extra):
    return load_config(BASE, TINY + list(extra))


def tiny_model(*extra, seed=0):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(*extra))


def synthetic_batch(cfg, batch=4, frames=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    d = cfg["data"]
    t = frames or d["num_frames"]
    lq, lt = d["query_max_len"], d["text_max_len"]

    def ids(length):
        x = torch.randint(672, 8000, (batch, length), generator=g)
        x[:, 0] = 101
        lengths = torch.randint(3, length + 1, (batch,), generator=g)
        pos = torch.arange(length)
        x = torch.where(pos == (lengths[:, None] - 1), torch.full_like(x, 102), x)
        x = torch.where(pos >= lengths[:, None], torch.zeros_like(x), x)
        return x, (x != 0).long()

    q, qm = ids(lq)
    t_ids, tm = ids(lt)
    s = d["image_size"]
    return {"query_ids": q, "query_mask": qm, "frames": torch.randn(batch, t, 3, s, s, generator=g),
            "text_ids": t_ids, "text_mask": tm, "domain": "video", "pids": torch.arange(batch),
            "query_index": torch.arange(batch)}


# ---------------------------------------------------------------- loading a cn_clip checkpoint

def test_full_size_checkpoint_gives_cn_clip_features(tmp_path):
    """ViT-B-16@RoBERTa-wwm-ext-base-chinese, random weights saved as cn_clip saves them, loaded
    through model.backbone.pretrained: same text and per-frame image features as cn_clip itself."""
    from cn_clip.clip.utils import create_model

    torch.manual_seed(0)
    clip = create_model("ViT-B-16@RoBERTa-wwm-ext-base-chinese").float().eval()
    path = tmp_path / "clip_cn_vit-b-16.pt"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in clip.state_dict().items()}}, path)

    cfg = load_config(BASE, [f"model.backbone.pretrained={path}", "loss.recon=false", "model.video.pooling=mean"])
    model = build_model(cfg).eval()
    ids = torch.tensor([[101, 2769, 4263, 3173, 1220, 102, 0, 0], [101, 6163, 1045, 3322, 5023, 7032, 4638, 102]])
    frames = torch.randn(2, 2, 3, 224, 224)
    with torch.no_grad():
        expected_text = F.normalize(clip.encode_text(ids), dim=-1)
        expected_frames = clip.encode_image(frames.flatten(0, 1))
        query = model.encode_query(ids, (ids != 0).long())
        per_frame = model.backbone.encode_frames(frames.flatten(0, 1))[0]
        item = model.encode_item(frames, ids, (ids != 0).long())
    torch.testing.assert_close(query, expected_text, atol=1e-5, rtol=0)
    torch.testing.assert_close(per_frame, expected_frames, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(item["text"], expected_text, atol=1e-5, rtol=0)
    torch.testing.assert_close(item["visual"], F.normalize(expected_frames.view(2, 2, -1).mean(1), dim=-1), atol=1e-5, rtol=0)


def test_checkpoint_formats_and_errors(tmp_path):
    source = CNClipBackbone(backbone_spec(tiny_cfg()))
    state = source.clip.state_dict()
    bare = tmp_path / "bare.pt"
    torch.save(state, bare)
    loaded = tiny_model(f"model.backbone.pretrained={bare}", seed=5)
    for k, v in loaded.backbone.clip.state_dict().items():
        assert torch.equal(v, state[k]), k
    # The fusion layers are copied from the loaded text tower, not from the random one.
    assert torch.equal(loaded.fusion.layers[0].attention.self.query.weight,
                       state[f"bert.encoder.layer.{len(loaded.backbone.text_layers) - 2}.attention.self.query.weight"])

    broken = {"module." + k: v for k, v in state.items() if k != "visual.proj"}
    broken["module.visual.extra"] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": broken}, bad)
    with pytest.raises(ValueError) as err:
        tiny_model(f"model.backbone.pretrained={bad}")
    assert str(bad) in str(err.value) and "missing: visual.proj" in str(err.value)
    assert "unexpected: visual.extra" in str(err.value)

    missing = tmp_path / "nowhere" / "clip_cn_vit-b-16.pt"
    with pytest.raises(FileNotFoundError, match="clip_cn_vit-b-16.pt") as err:
        tiny_model(f"model.backbone.pretrained={missing}")
    assert str(missing) in str(err.value) and "Chinese-CLIP" in str(err.value)


# ---------------------------------------------------------------- fusion encoder

def test_fusion_starts_as_copy_of_last_text_layers():
    model = tiny_model()
    text_layers = model.backbone.text_layers
    assert len(model.fusion.layers) == 2
    for fusion_layer, text_layer in zip(model.fusion.layers, text_layers[len(text_layers) - 2:]):
        for part in ("attention", "intermediate", "output"):
            ours = dict(getattr(fusion_layer, part).named_parameters())
            theirs = dict(getattr(text_layer, part).named_parameters())
            assert ours.keys() == theirs.keys() and ours
            for k in ours:
                assert torch.equal(ours[k], theirs[k]) and ours[k].data_ptr() != theirs[k].data_ptr(), (part, k)


def test_fusion_is_bidirectional_and_looks_at_vision():
    model = tiny_model().eval()
    b = synthetic_batch(tiny_cfg(), batch=2)
    ids = torch.tensor([101, 3000, 3001, 3002, 3003, 3004, 102, 0, 0, 0, 0, 0]).repeat(2, 1)
    mask = (ids != 0).long()
    last_real = 5  # the last text token before [SEP]
    with torch.no_grad():
        h, tokens = model.backbone.encode_frames(b["frames"].flatten(0, 1))
        tokens = tokens.view(2, 3, *tokens.shape[1:])
        v_cls = model.video_pooling(h.view(2, 3, -1))
        t_cls, _, text_states = model.backbone.encode_text(ids, mask, keep_layer=model.fusion.start_layer)
        base = model.fusion(v_cls, t_cls, text_states, mask, tokens)
        # Only the fusion's input state at the last position changes: the text tower's states are
        # already bidirectional, so u_cls (read at position 0) can only move if the fusion layers
        # themselves let position 0 attend to later positions.
        later = text_states.clone()
        later[:, last_real] += torch.randn_like(later[:, last_real])
        changed_text = model.fusion(v_cls, t_cls, later, mask, tokens)
        item = model.encode_item(b["frames"], ids, mask)["fused"]
        changed_frames = model.encode_item(b["frames"] + torch.randn_like(b["frames"]), ids, mask)["fused"]
    assert (changed_text - base).abs().max() > 1e-4
    assert (changed_frames - item).abs().max() > 1e-4


@pytest.mark.parametrize("pooling", ["add", "mean", "lstm", "ftt"])
def test_video_pooling_variants(pooling):
    cfg = tiny_cfg(f"model.video.pooling={pooling}")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    b = synthetic_batch(cfg, batch=2)
    with torch.no_grad():
        h = model.backbone.encode_frames(b["frames"].flatten(0, 1))[0].view(2, 3, -1)
        v = model.encode_item(b["frames"], b["text_ids"], b["text_mask"])["visual"]
        reversed_v = model.encode_item(b["frames"].flip(1), b["text_ids"], b["text_mask"])["visual"]
    if pooling in ("add", "mean"):
        torch.testing.assert_close(v, F.normalize(h.mean(1), dim=-1))
    elif pooling == "lstm":  # sees the frame order from the start
        assert (v - reversed_v).abs().max() > 1e-4
    else:  # the FTT starts as the frame mean and learns the order (tests/test_ftt.py)
        assert F.cosine_similarity(v, F.normalize(h.mean(1), dim=-1)).min() > 0.999


@pytest.mark.parametrize("extra", [["model.fusion.type=add"], ["model.fusion.type=combiner"],
                                   ["model.video.pooling=lstm"], ["loss.negatives=global", "loss.symmetric=true"]])
def test_variants_train_every_parameter(extra):
    model = tiny_model(*extra)
    out = model(synthetic_batch(tiny_cfg(*extra)))
    out["loss"].backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not dead
    if "model.fusion.type=add" in extra:
        with torch.no_grad():
            item = model.encode_item(*[synthetic_batch(tiny_cfg())[k] for k in ("frames", "text_ids", "text_mask")])
        torch.testing.assert_close(item["fused"], F.normalize(item["visual"] + item["text"], dim=-1))


def test_every_registered_pooling_and_fusion_passes_the_config_check_and_builds():
    from models.fusion import FUSIONS
    from models.video_pooling import POOLINGS

    built = {}
    for key, names, part in (("model.video.pooling", POOLINGS, "video_pooling"),
                             ("model.fusion.type", FUSIONS, "fusion")):
        for name in names:
            cfg = tiny_cfg(f"{key}={name}")
            validate_config(cfg)
            torch.manual_seed(0)
            built[key, name] = type(getattr(build_model(cfg), part)).__name__
    assert built == {
        ("model.video.pooling", "add"): "SumPooling", ("model.video.pooling", "mean"): "MeanPooling",
        ("model.video.pooling", "lstm"): "LSTMPooling", ("model.video.pooling", "ftt"): "FrameTemporalTransformer",
        ("model.video.pooling", "mit"): "MITPooling", ("model.fusion.type", "add"): "AddFusion",
        ("model.fusion.type", "attention"): "AttentionFusion", ("model.fusion.type", "combiner"): "Combiner",
        ("model.fusion.type", "fusion"): "FusionEncoder"}


def test_bad_config_values_are_clear_errors():
    with pytest.raises(ValueError, match="model.fusion.num_layers=6"):
        build_model(load_config(BASE, TINY + ["model.fusion.num_layers=6"]))
    # the builders look names up in their registries; the config check derives the allowed values from them
    with pytest.raises(ConfigError, match="model.video.pooling='gru': expected one of .'add', 'mean', 'lstm', "
                                          "'ftt', 'mit'.$"):
        validate_config(tiny_cfg("model.video.pooling=gru"))
    cfg = tiny_cfg()
    cfg["model"]["backbone"]["overrides"]["image_resolution"] = 64
    with pytest.raises(ValueError, match="data.image_size=32"):
        build_model(cfg)
    with pytest.raises(ValueError, match="frames"):
        tiny_model().encode_item(torch.zeros(2, 3, 32, 32), torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))


# ---------------------------------------------------------------- reconstruction heads

def test_text_reconstruction_is_causal_and_conditioned_on_v_cls():
    model = tiny_model().eval()
    head = model.text_recon
    ids = torch.tensor([[101, 3000, 3001, 3002, 3003, 3004, 102, 0]])
    mask = (ids != 0).long()
    v = torch.randn(1, 32)
    with torch.no_grad():
        base = head(ids, mask, v)
        later = ids.clone()
        later[0, 4] = 5000
        changed = head(later, mask, v)
        other_v = head(ids, mask, torch.randn(1, 32))
    torch.testing.assert_close(changed[:, :4], base[:, :4])
    assert (changed[:, 4] - base[:, 4]).abs().max() > 1e-4
    assert (other_v[:, 0] - base[:, 0]).abs().max() > 1e-4


def test_text_reconstruction_records_the_tokenizer_ids():
    from datasets.tokenizer import Tokenizer

    config = tiny_model().text_recon.decoder.config
    tokenizer = Tokenizer()
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (101, 102, 0)  # cn_clip's vocab.txt
    assert (tokenizer.start_id, tokenizer.end_id, tokenizer.pad_id) == (101, 102, 0)


def test_vision_reconstruction_needs_u_cls():
    model = tiny_model().eval()
    head = model.vision_recon
    tokens = torch.randn(2, 16, 64)
    mask = head.random_mask(2, 16, "cpu")
    assert mask.sum(1).tolist() == [12, 12]  # vision_mask_ratio 0.75 of 16 patches
    from losses import vision_reconstruction_loss
    with torch.no_grad():
        u = torch.randn(2, 32)
        loss = vision_reconstruction_loss(head(tokens, u, mask)[0], tokens, mask)
        replaced = vision_reconstruction_loss(head(tokens, torch.randn(2, 32), mask)[0], tokens, mask)
    assert abs(float(loss) - float(replaced)) > 1e-4


# ---------------------------------------------------------------- gradients and parameter groups

def test_total_loss_reaches_every_trained_parameter():
    model = tiny_model()
    out = model(synthetic_batch(tiny_cfg()))
    assert set(out) >= {"loss", "loss_qu", "loss_qv", "loss_qt", "loss_recon_text", "loss_recon_vision", "logit_scale"}
    expected = sum(out[k] for k in ("loss_qu", "loss_qv", "loss_qt", "loss_recon_text", "loss_recon_vision"))
    torch.testing.assert_close(out["loss"], expected)
    out["loss"].backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not dead
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("backbone.clip.visual.") for n in trained)
    assert "contrastive.logit_scale" in trained


def test_frozen_parts_get_no_gradient_and_no_optimizer_group():
    cfg = tiny_cfg("model.backbone.freeze=[visual, text]", "loss.weights.qv=0.5")
    torch.manual_seed(0)
    model = build_model(cfg)
    out = model(synthetic_batch(cfg))
    torch.testing.assert_close(out["loss"], out["loss_qu"] + 0.5 * out["loss_qv"] + out["loss_qt"]
                               + out["loss_recon_text"] + out["loss_recon_vision"])
    out["loss"].backward()
    for name, p in model.backbone.clip.named_parameters():
        assert p.grad is None, name
    assert all(p.grad is not None and p.grad.any() for p in model.fusion.parameters())
    groups = model.param_groups()
    assert [g["name"] for g in groups] == ["recon", "other"]
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}


def test_param_groups_learning_rates():
    cfg = tiny_cfg("train.lr=3e-4", "train.lr_visual=2e-5", "train.lr_recon=7e-6", "train.weight_decay=0.01")
    model = build_model(cfg)
    assert [sorted(g) for g in model.param_groups()] == [["name", "params"]] * 3
    groups = {g["name"]: g for g in build_optimizer(cfg, model).param_groups}
    assert list(groups) == ["visual", "recon", "other"]
    assert groups["visual"]["lr"] == 2e-5 and groups["recon"]["lr"] == 7e-6 and groups["other"]["lr"] == 3e-4
    assert all(g["weight_decay"] == 0.01 for g in groups.values())
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("backbone.clip.visual.") for p in groups["visual"]["params"])
    assert all(names[id(p)].startswith(("text_recon.", "vision_recon.")) for p in groups["recon"]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == sum(p.requires_grad for p in model.parameters())


def test_gradient_checkpointing_gives_same_gradients(monkeypatch):
    import models.backbone
    import models.fusion
    calls = []

    def counting(wrapped):
        def run(*args, **kwargs):
            calls.append(kwargs.get("use_reentrant"))
            return wrapped(*args, **kwargs)
        return run

    monkeypatch.setattr(models.backbone, "checkpoint", counting(models.backbone.checkpoint))
    monkeypatch.setattr(models.fusion, "checkpoint", counting(models.fusion.checkpoint))
    grads = []
    for flag in ("false", "true"):
        model = tiny_model(f"model.backbone.grad_checkpointing={flag}")
        assert model.text_recon.decoder.is_activation_checkpointing == (flag == "true")
        torch.manual_seed(3)  # same dropout masks; checkpointing replays the RNG state
        model(synthetic_batch(tiny_cfg()))["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    # 2 ViT blocks + 4 text layers x 2 (query, item text) + 2 fusion layers, all non-reentrant
    assert calls == [False] * 12
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------- learning

def test_tiny_model_overfits_one_batch_of_the_mini_dataset(mini_root):
    from datasets import build_train_loader

    cfg = tiny_cfg(f"data.root={mini_root}", "train.batch_size=8", "data.num_workers=0",
                   "train.lr=2e-3", "train.lr_visual=1e-3", "train.lr_recon=5e-3")
    loader, _ = build_train_loader(cfg, 0, 1)
    batch = next(iter(loader))
    assert batch["frames"].shape == (8, 3, 3, 32, 32)
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    first = None
    for _ in range(80):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first or {k: float(v.detach()) for k, v in out.items()}
    last = {k: float(v.detach()) for k, v in out.items()}
    assert last["loss"] <= 0.1 * first["loss"], (first, last)
    for term in ("loss_qu", "loss_qv", "loss_qt", "loss_recon_text", "loss_recon_vision"):
        assert last[term] < first[term], term
