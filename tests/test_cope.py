"""COPE (model.family=cope): its towers against the libraries' own modules, each loss term against a hand
computation, the class centres, the accumulation protocol's equality, and its config checks."""
import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F

from datasets.families import build_tokenizer, image_stats
from datasets.tokenizer import Tokenizer
from engine.checks import text_warning, validate_config
from evaluate.metrics import SEARCH_KS
from losses.cope import ClassCentres, pair_terms, query_terms
from losses.query_contrastive import QueryContrastiveLoss
from models import build_model
from models.cope import XClipVideoEncoder, bert_config, build_xclip, load_text_tower
from models.weights import COPE_TEXT_HELP, check_cope_text_weights, check_weights
from tests.helpers import COPE_TINY, REPO_ROOT, TEXT_TINY, XCLIP_TINY
from utils.checkpoint import WeightsMismatch
from utils.config import ConfigError, load_config

def cope_cfg(mode="ft", *overrides):
    return load_config(os.path.join(REPO_ROOT, "configs", "base.yaml"), [
        "model.family=cope", "model.backbone.pretrained=null", "loss.recon=false", f"train.mode={mode}",
        "model.fusion.type=add", "loss.symmetric=true", *COPE_TINY, "loss.cope.cls_negatives=5", *overrides])


def _texts(b, length=12):
    ids = torch.randint(5, 100, (b, length))
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, 7:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def pair_batch(b=4, t=3):
    ids, mask = _texts(b)
    vids, vmask = _texts(b)
    return {"frames": torch.randn(b, 1, 3, 32, 32), "text_ids": ids, "text_mask": mask,
            "video_frames": torch.randn(b, t, 3, 32, 32), "video_text_ids": vids, "video_text_mask": vmask,
            "pair_valid": torch.tensor([True] * (b - 1) + [False]), "query_index": torch.arange(b) * 3}


def query_batch(b=4, t=3):
    ids, mask = _texts(b)
    qids, qmask = _texts(b, 8)
    return {"query_ids": qids, "query_mask": qmask, "frames": torch.randn(b, t, 3, 32, 32), "text_ids": ids,
            "text_mask": mask, "query_index": torch.arange(b) + 10}


# ----------------------------------------------------------------------------- towers against the libraries

def test_video_encoder_is_xclips_get_video_features_for_every_clip_length():
    from transformers import XCLIPModel

    torch.manual_seed(0)
    xclip = build_xclip(None, copy.deepcopy(XCLIP_TINY)).eval()
    frames = torch.randn(2, 4, 3, 32, 32)
    encoder = XClipVideoEncoder(copy.deepcopy(xclip)).eval()
    with torch.no_grad():
        assert torch.allclose(encoder(frames), xclip.get_video_features(pixel_values=frames).pooler_output, atol=1e-5)
        # a 1-frame clip (a goods image) equals the library's own model built for 1-frame videos
        config = copy.deepcopy(xclip.config)
        config.vision_config.num_frames = 1
        one = XCLIPModel(config).eval()
        state = xclip.state_dict()
        state["mit.position_embedding"] = state["mit.position_embedding"][:, :1]
        one.load_state_dict(state)
        image = frames[:, :1]
        assert torch.allclose(encoder(image), one.get_video_features(pixel_values=image).pooler_output, atol=1e-5)
    with pytest.raises(ValueError, match="set data.num_frames to at most 4"):
        encoder(torch.randn(1, 5, 3, 32, 32))


def test_text_tower_loads_the_rbt3_tower_of_a_cn_clip_checkpoint(tmp_path):
    from cn_clip.clip.model import CLIP
    from cn_clip.clip.modeling_bert import BertModel

    from models.backbone import clip_arguments

    torch.manual_seed(0)
    args = clip_arguments("ViT-B-16", "RBT3-chinese", 32, 16, {"vision_width": 32, "vision_layers": 1,
                                                              "vision_patch_size": 16, "vision_head_width": 16,
                                                              **TEXT_TINY})
    clip = CLIP(**args).eval()
    path = tmp_path / "clip_cn_rn50.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in clip.state_dict().items()}}, path)
    bert = BertModel(bert_config("RBT3-chinese", TEXT_TINY)).eval()
    load_text_tower(bert, str(path))
    ids, _ = _texts(3)
    mask = ids.ne(Tokenizer().pad_id).long()
    with torch.no_grad():
        cls = bert(ids, attention_mask=mask)[0][:, 0]
        assert torch.allclose(cls @ clip.text_projection, clip.encode_text(ids), atol=1e-5)
    wrong = BertModel(bert_config("RBT3-chinese", {**TEXT_TINY, "text_num_hidden_layers": 3}))
    with pytest.raises(WeightsMismatch, match="missing"):
        load_text_tower(wrong, str(path))


# ----------------------------------------------------------------------------- loss terms by hand

def _infonce(a, b, scale, valid=None):
    """Symmetric InfoNCE written out: -log(exp(s_ii) / sum_j exp(s_ij)) in both directions, over valid anchors."""
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    s = scale * a @ b.t()
    rows = range(len(a)) if valid is None else [i for i in range(len(a)) if valid[i]]
    forward = [-(s[i, i] - torch.log(torch.exp(s[i]).sum())) for i in rows]
    backward = [-(s[i, i] - torch.log(torch.exp(s[:, i]).sum())) for i in rows]
    return (sum(forward) / len(rows) + sum(backward) / len(rows)) / 2


def test_each_contrastive_term_is_the_infonce_of_its_two_features():
    torch.manual_seed(0)
    loss = QueryContrastiveLoss(temperature=0.1, learn_temperature=False, symmetric=True)
    feats = {d: {k: torch.randn(5, 8) for k in ("fused", "text", "visual")} for d in ("goods", "video")}
    valid = torch.tensor([True, True, False, True, True])
    terms = pair_terms(loss, feats["goods"], feats["video"], valid=valid)
    g, v = feats["goods"], feats["video"]
    expected = {"loss_cross_fused": _infonce(g["fused"], v["fused"], 10, valid),
                "loss_cross_text": _infonce(g["text"], v["text"], 10, valid),
                "loss_cross_visual": _infonce(g["visual"], v["visual"], 10, valid),
                "loss_inner_goods": _infonce(g["text"], g["visual"], 10),
                "loss_inner_video": _infonce(v["text"], v["visual"], 10)}
    assert terms.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.allclose(terms[name], value, atol=1e-5), name
    query = torch.randn(5, 8)
    for goods, item in ((True, g), (False, v)):
        terms = query_terms(loss, query, item, goods)
        assert torch.allclose(terms["loss_query_fused"], _infonce(query, item["fused"], 10), atol=1e-5)
        assert torch.allclose(terms["loss_query_text"], _infonce(query, item["text"], 10), atol=1e-5)
        assert torch.allclose(terms["loss_query_visual"], _infonce(query, item["visual"], 10), atol=1e-5)
        inner = _infonce(item["text"], item["visual"], 10)
        own, other = ("loss_inner_goods", "loss_inner_video") if goods else ("loss_inner_video", "loss_inner_goods")
        assert torch.allclose(terms[own], inner, atol=1e-5) and terms[other] == 0


def test_class_centres_loss_and_momentum_update_by_hand():
    torch.manual_seed(0)
    bank = ClassCentres(num_classes=10, dim=4, negatives=100, temperature=0.5, momentum=0.25)
    first = torch.randn(4, 4)
    bank.update(first, torch.tensor([1, 3, 3, 6]))
    unit = F.normalize(first, dim=-1)
    assert torch.allclose(bank.centres[1], unit[0]) and torch.allclose(bank.centres[6], unit[3])
    assert torch.allclose(bank.centres[3], F.normalize(unit[1] + unit[2], dim=0), atol=1e-6)
    assert bank.seen.nonzero().flatten().tolist() == [1, 3, 6]
    second = torch.randn(1, 4)
    bank.update(second, torch.tensor([6]))
    moved = 0.25 * unit[3] + 0.75 * F.normalize(second[0], dim=0)
    assert torch.allclose(bank.centres[6], moved / moved.norm(), atol=1e-6)
    # classes 1 and 6 are in the batch, 3 is a sampled negative (all seen ones: negatives=100); class 8 is unseen
    features, labels = torch.randn(3, 4), torch.tensor([6, 1, 8])
    centres = {c: bank.centres[c] for c in (1, 3, 6)}
    expected = 0
    for f, c in zip(features[:2], (6, 1)):
        logits = {k: torch.dot(f / f.norm(), w) / 0.5 for k, w in centres.items()}
        expected += -(logits[c] - torch.log(sum(torch.exp(v) for v in logits.values())))
    assert torch.allclose(bank.loss(features, labels), expected / 2, atol=1e-5)
    nothing_seen = ClassCentres(num_classes=10, dim=4, negatives=3, temperature=0.5, momentum=0.25)
    x = torch.randn(2, 4, requires_grad=True)
    zero = nothing_seen.loss(x, torch.tensor([0, 1]))
    assert zero == 0 and zero.requires_grad
    with pytest.raises(ValueError, match="loss.cope.num_classes=10"):
        bank.loss(features, torch.tensor([10, 1, 2]))


def test_only_the_sampled_rows_leave_the_cpu():
    bank = ClassCentres(num_classes=1000, dim=4, negatives=7, temperature=0.5, momentum=0.5)
    bank.update(torch.randn(500, 4), torch.arange(500))
    model = torch.nn.Sequential(bank).to(torch.float64)
    assert bank.centres.dtype == torch.float32 and bank.centres.device.type == "cpu"
    assert {"0.centres", "0.seen"} <= set(model.state_dict())
    rows, target, known = bank.sample(torch.tensor([9, 2, 5, 700]))
    assert rows[:4].tolist() == [2, 5, 9, 700] and target.tolist() == [2, 0, 1, 3]
    assert known.tolist() == [True, True, True, False]
    negatives = rows[4:]
    assert len(negatives) == 7 and len(set(negatives.tolist())) == 7
    assert all(bank.seen[n] and int(n) not in (2, 5, 9) for n in negatives)


# ----------------------------------------------------------------------------- the model

@pytest.mark.parametrize("mode", ["ft", "query"])
def test_forward_is_embed_then_batch_terms_then_total(mode):
    torch.manual_seed(0)
    model = build_model(cope_cfg(mode))
    batch = pair_batch() if mode == "ft" else query_batch()
    model.classes.update(torch.randn(8, 32), torch.cat([torch.arange(4) * 3, torch.arange(4) + 10]))
    twin = copy.deepcopy(model)
    model.train(), twin.train()
    torch.manual_seed(1)
    out = model(batch)
    torch.manual_seed(1)
    emb, local = twin.embed(batch)
    terms = {**local, **twin.batch_terms(emb)}
    assert out["loss_cls"] > 0 and set(terms) | {"loss", "logit_scale"} == set(out)
    for name, value in terms.items():
        assert torch.allclose(out[name], value, atol=1e-6), name
    assert torch.allclose(out["loss"], twin.total(terms), atol=1e-6)
    assert torch.equal(model.classes.centres, twin.classes.centres)  # both moved the centres once
    # micro-batches: their embeddings concatenated give the whole batch's terms (eval: no dropout, no update)
    model.eval()
    halves = [{k: v[i:i + 2] for k, v in batch.items()} for i in (0, 2)]
    parts = [model.embed(h)[0] for h in halves]
    joined = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    torch.manual_seed(2)
    whole = model.batch_terms(model.embed(batch)[0])
    torch.manual_seed(2)
    split = model.batch_terms(joined)
    for name in whole:
        assert torch.allclose(whole[name], split[name], atol=1e-5), name


def test_goods_and_videos_go_through_their_own_heads():
    torch.manual_seed(0)
    model = build_model(cope_cfg("ft")).eval()
    batch = pair_batch()
    with torch.no_grad():
        for frames, domain in ((batch["frames"], "goods"), (batch["video_frames"], "video")):
            out = model.encode_item(frames, batch["text_ids"], batch["text_mask"])
            visual = model.visual_heads[domain](model.visual(frames))
            states = model.text(batch["text_ids"], attention_mask=batch["text_mask"])[0]
            assert torch.allclose(out["visual"], F.normalize(visual, dim=-1), atol=1e-6)
            assert torch.allclose(out["text"], F.normalize(model.text_heads[domain](states[:, 0]), dim=-1), atol=1e-6)
            assert torch.allclose(out["fused"].norm(dim=-1), torch.ones(4))
    groups = {g["name"]: len(g["params"]) for g in model.param_groups()}
    assert set(groups) == {"visual", "text", "new"}
    assert sum(groups.values()) == sum(1 for p in model.parameters() if p.requires_grad)


def test_checkpointing_the_visual_tower_keeps_the_gradients_of_mixed_clip_lengths():
    """Goods (T = 1) and videos (T = 3) in one step: the recomputation must run each at its own clip length."""
    torch.manual_seed(0)
    model = build_model(cope_cfg("ft", "loss.cope.weights.cls=0"))
    twin = copy.deepcopy(model)
    twin.visual.grad_checkpointing = True
    batch = pair_batch()
    grads = []
    for m in (model, twin):
        torch.manual_seed(1)
        m(batch)["loss"].backward()
        grads.append([p.grad for p in m.visual.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_the_model_learns_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model(cope_cfg("ft", "loss.cope.weights.cls=0"))
    batch = pair_batch()
    batch["pair_valid"][:] = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_a_pair_batch_without_query_indices_is_named_when_classifying():
    model = build_model(cope_cfg("ft"))
    batch = pair_batch()
    del batch["query_index"]
    with pytest.raises(KeyError, match="query_index"):
        model(batch)


def test_cope_q_trains_in_the_engine_and_its_checkpoint_evaluates(mini_root, tmp_path):
    """COPE-Q's row on the mini set: 3 steps of the engine (the -Q batches carry each sample's query index), the
    class centres saved with the checkpoint, then one direction scored from it."""
    from engine import train
    from engine.checks import preflight
    from evaluate.pipeline import evaluate_direction
    from utils.checkpoint import LATEST, load_checkpoint

    out = str(tmp_path / "cope_q")
    # the row's config with the tiny towers of cope_cfg
    extra = [f"data.root={mini_root}", f"output_dir={out}", "data.num_workers=0", "train.batch_size=4",
             "train.epochs=1", "train.max_steps=3", "train.threads=1", "train.amp=none", "eval.batch_size=32",
             "eval.page_queries=0", "model.backbone.pretrained=null", "model.cope.text_pretrained=null",
             "model.backbone.grad_checkpointing=false", *COPE_TINY, "loss.cope.num_classes=1000"]
    row = os.path.join(REPO_ROOT, "configs", "baselines", "cope_q.yaml")
    cfg = load_config(row, extra)
    validate_config(cfg)
    preflight(cfg)
    assert train(cfg)["global_step"] == 3
    state = load_checkpoint(os.path.join(out, LATEST))
    assert int(state["model"]["classes.seen"].sum()) == 3 * 4  # one query per sample, none repeated in a step
    cfg = load_config(row, extra + ["eval.direction=video2goods", f"eval.checkpoint={os.path.join(out, LATEST)}"])
    validate_config(cfg, evaluate=True)
    recall = evaluate_direction(cfg)["fused"]["recall"]
    assert list(recall) == [str(k) for k in SEARCH_KS] and all(0 <= v <= 100 for v in recall.values())


# ----------------------------------------------------------------------------- configs, weights, data side

def test_cope_rows_validate_and_wrong_settings_are_named():
    for row in ("cope_ft", "cope_q"):
        cfg = load_config(os.path.join(REPO_ROOT, "configs", "baselines", f"{row}.yaml"))
        validate_config(cfg)
        assert (cfg["train"]["optimizer"], cfg["train"]["lr"], cfg["train"]["lr_visual"],
                cfg["pretrain"]["lr_new"]) == ("adamw", 5e-5, 5e-7, 5e-3)
    for extra, message in ((["train.mode=infer"], "no released weights"), (["loss.recon=true"], "loss.recon=false"),
                           (["data.num_frames=1"], "expected at least 2"),
                           (["data.translations=x.tsv"], "reads the Chinese texts"),
                           (["model.cope.fusion_heads=5"], "divisor of model.embed_dim"),
                           (["loss.cope.cls_momentum=1.0"], r"\[0, 1\)"),
                           (["loss.cope.weights.cls=-1"], "loss.cope.weights.cls")):
        with pytest.raises(ConfigError, match=message):
            validate_config(cope_cfg("ft", *extra), evaluate="infer" in extra[0])


def test_sizes_that_do_not_fit_the_towers_are_named():
    for extra, message in ((["data.num_frames=5"], "data.num_frames=5 exceeds the 4 frame positions"),
                           (["data.image_size=64"], "set data.image_size=32"),
                           (["data.text_max_len=600"], "set data.text_max_len to at most 512")):
        with pytest.raises(ValueError, match=message):
            build_model(cope_cfg("ft", *extra))


def test_weights_checks_and_sources(tmp_path):
    check_weights("cope", None)
    check_cope_text_weights(None)
    with pytest.raises(FileNotFoundError) as err:
        check_cope_text_weights(str(tmp_path / "clip_cn_rn50.pt"))
    assert str(err.value).endswith(COPE_TEXT_HELP) and "file not found" in str(err.value)
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match="expects 'xclip'"):
        check_weights("cope", str(folder))
    stats = {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.3, 0.2, 0.1]}
    (folder / "preprocessor_config.json").write_text(json.dumps(stats))
    assert image_stats("cope", str(folder)) == ((0.1, 0.2, 0.3), (0.3, 0.2, 0.1))
    assert isinstance(build_tokenizer("cope", str(folder)), Tokenizer)
    line = text_warning(load_config(os.path.join(REPO_ROOT, "configs", "baselines", "cope_ft.yaml")))
    assert "X-CLIP from " in line and "xclip-base-patch16;" in line
    assert "RBT3 from the text tower of " in line and line.split(";")[1].endswith("clip_cn_rn50.pt")
    assert "random (model.cope.xclip_overrides)" in text_warning(cope_cfg("ft"))
