"""The backbone families of Table 2 (models.families, models.weights, datasets.families) on tiny random models
saved in each family's release format (the family_weights fixture of conftest.py): the features are the libraries'
own, the tokenizers give the libraries' ids, the weights and sizes are checked with messages naming the setting,
freezing and the visual parameter group select the right tower."""
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from datasets.counters import SharedCounters
from datasets.families import ENGLISH_FAMILIES, FAMILIES, build_tokenizer, image_stats
from datasets.tokenizer import Tokenizer
from datasets.transforms import CLIP_MEAN, CLIP_STD
from models import OWN_MODELS, backbone_spec, build_model
from models.families import BACKBONES, build_backbone
from models.weights import WEIGHTS_HELP, check_weights
from tests.helpers import (FAMILY_CONTEXT_LENGTH, FASHION_STATS, family_cfg, save_cyclip_checkpoint,
                            tiny_clip_tokenizer)

TEXTS = ["Red hat!", "", "running shoes for men, size 42, black and white leather"]


def built(cfg):
    return build_backbone(backbone_spec(cfg))


def backbone(family, family_weights, *overrides):
    return built(family_cfg(family, family_weights(family), *overrides))


def tokenizer_of(cfg):
    return build_tokenizer(cfg["model"]["family"], cfg["model"]["backbone"]["pretrained"])


def stats_of(cfg):
    return image_stats(cfg["model"]["family"], cfg["model"]["backbone"]["pretrained"], cfg["data"]["preprocess"])


def library_model(family, path):
    """The family's model loaded by its library alone, as the family's own code would."""
    if family == "cyclip":
        from open_clip.model import build_model_from_openai_state_dict

        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        state = {k[len("module."):]: v for k, v in state.items()}
        model = build_model_from_openai_state_dict(dict(state)).float()
        model.load_state_dict(state)
        return model.eval()
    if family == "xclip":
        from safetensors.torch import load_file
        from transformers import XCLIPConfig, XCLIPModel

        config = XCLIPConfig.from_pretrained(path)
        config.vision_config.num_frames = 1
        model = XCLIPModel.from_pretrained(path, config=config, ignore_mismatched_sizes=True, dtype=torch.float32)
        first = load_file(os.path.join(path, "model.safetensors"))["mit.position_embedding"][:, :1]
        model.mit.position_embedding.data.copy_(first)
        return model.eval()
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(path, dtype=torch.float32).eval()


def text_projection(family, model, states):
    return states @ model.text_projection if family == "cyclip" else model.text_projection(states)


# ----------------------------------------------------------------------------- features


@pytest.mark.parametrize("family", ENGLISH_FAMILIES)
def test_features_are_the_librarys_own(family, family_weights):
    path = family_weights(family)
    cfg = family_cfg(family, path)
    bb = built(cfg).eval()
    ref = library_model(family, path)
    ids, mask = tokenizer_of(cfg)(TEXTS, cfg["data"]["query_max_len"])
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        proj, hidden, kept = bb.encode_text(ids, mask)
        if family == "cyclip":  # open_clip's tower takes its full context, padded with 0
            expected = ref.encode_text(F.pad(ids, (0, FAMILY_CONTEXT_LENGTH - ids.shape[1])))
        else:
            expected = ref.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        assert_close(proj, expected)
        assert kept is None and hidden.shape == (3, ids.shape[1], bb.text_width)
        # the end token's final state, projected, is the text feature
        end = mask.sum(dim=1) - 1
        assert_close(text_projection(family, ref, hidden[torch.arange(3), end]), expected)
        # padding changes nothing
        longer_ids, longer_mask = tokenizer_of(cfg)(TEXTS[:2], cfg["data"]["text_max_len"])
        assert_close(bb.encode_text(longer_ids, longer_mask)[0], proj[:2])

        proj, tokens = bb.encode_frames(images)
        if family == "cyclip":
            expected = ref.encode_image(images)
        elif family == "xclip":  # N one-frame videos
            expected = ref.get_video_features(pixel_values=images.unsqueeze(1)).pooler_output
        else:
            expected = ref.get_image_features(pixel_values=images).pooler_output
            assert_close(ref.visual_projection(tokens[:, 0]), expected)  # tokens are after post_layernorm
        assert_close(proj, expected)
        assert tokens.shape == (3, 1 + bb.num_patches, bb.vision_width)
    assert (bb.embed_dim, bb.image_size, bb.context_length) == (64, 32, FAMILY_CONTEXT_LENGTH)
    assert bb.vocab_size == tokenizer_of(cfg).vocab_size


def test_xclip_runs_one_frame_videos_whatever_the_checkpoint_says(family_weights):
    import json

    with open(os.path.join(family_weights("xclip"), "config.json"), encoding="utf-8") as f:
        assert json.load(f)["vision_config"]["num_frames"] == 8
    bb = backbone("xclip", family_weights)
    assert bb.model.config.vision_config.num_frames == 1
    assert all(layer.num_frames == 1 for layer in bb.model.vision_model.encoder.layers)
    assert bb.model.mit.position_embedding.shape == (1, 1, 64)


def test_cyclip_keeps_the_checkpoints_float32_weights(family_weights):
    state = torch.load(family_weights("cyclip"), map_location="cpu", weights_only=True)["state_dict"]
    own = backbone("cyclip", family_weights).model.state_dict()
    assert own.keys() == {k[len("module."):] for k in state}
    assert all(torch.equal(own[k[len("module."):]], v) for k, v in state.items())


def test_cyclip_vit_checkpoint(family_weights, tmp_path):
    path = save_cyclip_checkpoint(str(tmp_path / "vit.pt"), vit=True)
    bb = built(family_cfg("cyclip", path)).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        proj, tokens = bb.encode_frames(images)
        expected = library_model("cyclip", path).encode_image(images)
    assert_close(proj, expected)
    assert tokens.shape == (2, 1 + 16, 64) and bb.num_patches == 16
    assert_close(tokens[:, 0] @ bb.model.visual.proj, expected)  # [CLS] after ln_post comes first


@pytest.mark.parametrize("family", ["clip", "xclip", "cyclip"])
def test_gradient_checkpointing_gives_the_same_gradients(family, family_weights):
    cfg = family_cfg(family, family_weights(family))
    ids, mask = tokenizer_of(cfg)(TEXTS, 12)
    images = torch.randn(2, 3, 32, 32)
    grads = []
    for flag in ("false", "true"):
        bb = backbone(family, family_weights, f"model.backbone.grad_checkpointing={flag}").train()
        (bb.encode_frames(images)[0].sum() + bb.encode_text(ids, mask)[0].sum()).backward()
        grads.append({n: p.grad for n, p in bb.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert_close(grads[1][name], grads[0][name], msg=name)


def test_chinese_clip_follows_the_protocol():
    bb = built(family_cfg("chinese_clip", None)).eval()
    tok = tokenizer_of(family_cfg("chinese_clip", None))
    assert isinstance(tok, Tokenizer) and bb.vocab_size == tok.vocab_size
    assert bb.context_length == 512 and (bb.embed_dim, bb.image_size) == (64, 32)
    visual = [n for n, _ in bb.named_parameters() if n.startswith(bb.visual_prefixes)]
    assert visual == [n for n, _ in bb.named_parameters() if n.startswith("clip.visual.")] and visual
    ids, mask = tok(["红色连衣裙"], 12)
    assert bb.encode_text(ids, mask, keep_layer=2)[2].shape == (1, 12, bb.text_width)


@pytest.mark.parametrize("family", ENGLISH_FAMILIES)
def test_only_chinese_clip_keeps_an_intermediate_text_state(family, family_weights):
    bb = backbone(family, family_weights)
    ids, mask = tokenizer_of(family_cfg(family, family_weights(family)))(TEXTS, 12)
    with pytest.raises(ValueError, match="model.fusion.type=fusion"):
        bb.encode_text(ids, mask, keep_layer=1)


# ----------------------------------------------------------------------------- tokenizers


def library_ids(family, path, text, max_len):
    """The library tokenizer's ids of `text` with its special tokens, unpadded."""
    if family == "cyclip":
        from open_clip.tokenizer import SimpleTokenizer

        ids = SimpleTokenizer()(text, context_length=max_len)[0]
        return ids[:int((ids != 0).sum())].tolist()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)(text)["input_ids"]


@pytest.mark.parametrize("family", ENGLISH_FAMILIES)
def test_english_tokenizers_give_the_librarys_ids(family, family_weights):
    path = family_weights(family)
    tok = tokenizer_of(family_cfg(family, path))
    long_text = "word " * 40
    ids, mask = tok([TEXTS[0], long_text], 12)
    assert ids.shape == mask.shape == (2, 12) and ids.dtype == mask.dtype == torch.long

    own = library_ids(family, path, TEXTS[0], 77)
    n = len(own)
    assert ids[0, :n].tolist() == own and bool((ids[0, n:] == tok.pad_id).all())
    assert mask[0].tolist() == [1] * n + [0] * (12 - n)

    # cut to max_len, the end token kept last, counted
    cut = library_ids(family, path, long_text, 77)
    assert ids[1].tolist() == cut[:11] + [tok.end_id] and bool(mask[1].all())
    assert tok.counts.as_dict() == {"texts": 2, "truncated": 1} and tok.truncation_rate == 0.5
    if family == "cyclip":
        assert (tok.vocab_size, tok.pad_id) == (49408, 0)


@pytest.mark.parametrize("family", ENGLISH_FAMILIES)
def test_text_reconstruction_records_the_family_tokenizer_ids(family, family_weights):
    cfg = family_cfg(family, family_weights(family))
    assert cfg["loss"]["recon"]
    torch.manual_seed(0)
    config = build_model(cfg).text_recon.decoder.config
    tok = tokenizer_of(cfg)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (tok.start_id, tok.end_id, tok.pad_id)
    assert config.bos_token_id not in (101, 102)  # cn_clip's [CLS] and [SEP]


@pytest.mark.parametrize("family", ["chinese_clip", *ENGLISH_FAMILIES])
def test_tokenizers_are_picklable(family, family_weights):
    tok = tokenizer_of(family_cfg(family, None if family == "chinese_clip" else family_weights(family)))
    # the shared-memory counters travel to DataLoader workers by inheritance, never by pickle
    state = {k: v for k, v in vars(tok).items() if k != "counts"}
    clone = object.__new__(type(tok))
    clone.__dict__.update(pickle.loads(pickle.dumps(state)), counts=SharedCounters("texts", "truncated"))
    assert torch.equal(clone(TEXTS, 12)[0], tok(TEXTS, 12)[0])


# ----------------------------------------------------------------------------- weights and sizes


def weights_of(family, path):
    """(model.family, model.backbone.pretrained)"""
    return family, None if path is None else str(path)


def assert_names_weights(err, family, shown):
    message = str(err.value)
    assert message.startswith(f"model.backbone.pretrained={shown}: ") and message.endswith(WEIGHTS_HELP[family])


@pytest.mark.parametrize("family", ["clip", "fashionclip", "xclip"])
def test_hf_families_need_a_save_pretrained_folder(family, tmp_path):
    missing, empty, a_file = tmp_path / "nowhere", tmp_path / "empty", tmp_path / "weights.bin"
    empty.mkdir()
    a_file.write_bytes(b"")
    for path, what in [(missing, "folder not found"), (empty, "no config.json"), (a_file, "not a folder")]:
        with pytest.raises(FileNotFoundError, match=what) as err:
            check_weights(*weights_of(family, path))
        assert_names_weights(err, family, path)
    with pytest.raises(FileNotFoundError) as err:
        check_weights(*weights_of(family, None))
    assert_names_weights(err, family, "null")


def test_a_folder_of_another_model_is_refused(family_weights):
    with pytest.raises(ValueError, match="config.json describes a 'clip' model, model.family=xclip expects 'xclip'"):
        check_weights(*weights_of("xclip", family_weights("clip")))
    check_weights(*weights_of("fashionclip", family_weights("clip")))


def test_cyclip_needs_its_checkpoint_file(tmp_path, family_weights):
    for path, what in [(tmp_path / "cyclip.pt", "file not found"), (tmp_path, "a folder")]:
        with pytest.raises(FileNotFoundError, match=what) as err:
            check_weights(*weights_of("cyclip", path))
        assert_names_weights(err, "cyclip", path)
    with pytest.raises(FileNotFoundError) as err:
        check_weights(*weights_of("cyclip", None))
    assert_names_weights(err, "cyclip", "null")
    check_weights(*weights_of("cyclip", family_weights("cyclip")))


def test_chinese_clip_may_start_from_random_weights(tmp_path):
    check_weights(*weights_of("chinese_clip", None))
    with pytest.raises(FileNotFoundError, match="file not found") as err:
        check_weights(*weights_of("chinese_clip", tmp_path / "clip_cn_vit-b-16.pt"))
    assert_names_weights(err, "chinese_clip", tmp_path / "clip_cn_vit-b-16.pt")
    assert set(WEIGHTS_HELP) == set(FAMILIES) == set(BACKBONES) | set(OWN_MODELS)


def test_a_cyclip_file_of_something_else_is_named(tmp_path, family_weights):
    bad = tmp_path / "not_clip.pt"
    torch.save({"state_dict": {"module.fc.weight": torch.zeros(2, 2)}}, bad)
    with pytest.raises(ValueError, match=f"model.backbone.pretrained={bad}: not an OpenAI-CLIP state dict"):
        built(family_cfg("cyclip", str(bad)))


@pytest.mark.parametrize("family", ENGLISH_FAMILIES)
@pytest.mark.parametrize("override,message", [
    ("model.embed_dim=32", "model.embed_dim=32 differs from the projection size 64 of the {family} weights at {path}; "
                           "set model.embed_dim=64"),
    ("data.image_size=64", "data.image_size=64 differs from the input size 32 of the {family} weights at {path}; "
                           "set data.image_size=32"),
    ("data.text_max_len=40", "data.text_max_len=40 exceeds the 32 tokens the text tower of the {family} weights at "
                             "{path} takes; set data.text_max_len to at most 32"),
    ("data.query_max_len=33", "data.query_max_len=33 exceeds the 32 tokens"),
])
def test_sizes_must_fit_the_weights(family, override, message, family_weights):
    path = family_weights(family)
    with pytest.raises(ValueError) as err:
        backbone(family, family_weights, override)
    assert str(err.value).startswith(message.format(family=family, path=path))


# ----------------------------------------------------------------------------- freezing and parameter groups


def used_parameters(bb, run):
    bb.zero_grad(set_to_none=True)
    sum(out.sum() for out in run() if out is not None).backward()
    return {n for n, p in bb.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ENGLISH_FAMILIES)
def test_visual_prefixes_are_exactly_the_vision_tower(family, family_weights):
    """Parameters under visual_prefixes are those the frames reach; every other trained one is reached by
    the text (DDP without find_unused_parameters needs every trained parameter used)."""
    bb = backbone(family, family_weights).train()
    ids, mask = tokenizer_of(family_cfg(family, family_weights(family)))(TEXTS, 12)
    by_frames = used_parameters(bb, lambda: bb.encode_frames(torch.randn(2, 3, 32, 32)))
    by_text = used_parameters(bb, lambda: bb.encode_text(ids, mask))
    trained = {n for n, p in bb.named_parameters() if p.requires_grad}
    visual = {n for n, _ in bb.named_parameters() if n.startswith(bb.visual_prefixes)}
    assert by_frames == visual and not by_frames & by_text
    assert by_frames | by_text == trained
    assert not bb.model.logit_scale.requires_grad


@pytest.mark.parametrize("family", ENGLISH_FAMILIES)
def test_freeze(family, family_weights):
    for part, prefixes in (("visual", "visual_prefixes"), ("text", "text_prefixes")):
        bb = backbone(family, family_weights, f"model.backbone.freeze=[{part}]")
        frozen = {n for n, p in bb.named_parameters() if not p.requires_grad}
        under = {n for n, _ in bb.named_parameters() if n.startswith(getattr(bb, prefixes))}
        assert under and under <= frozen
        assert all(p.requires_grad for n, p in bb.named_parameters()
                   if n not in under and n.startswith(bb.visual_prefixes + bb.text_prefixes))


# ----------------------------------------------------------------------------- pixel statistics


def test_image_stats_come_from_the_preprocessor_config(family_weights):
    fashion = family_cfg("fashionclip", family_weights("fashionclip"))
    assert stats_of(fashion) == (tuple(FASHION_STATS["image_mean"]), tuple(FASHION_STATS["image_std"]))
    assert not os.path.exists(os.path.join(family_weights("clip"), "preprocessor_config.json"))
    for family in ("clip", "cyclip"):
        assert stats_of(family_cfg(family, family_weights(family))) == (CLIP_MEAN, CLIP_STD)
    assert stats_of(family_cfg("chinese_clip", None)) == (CLIP_MEAN, CLIP_STD)


def test_image_stats_of_a_processor_saved_by_transformers_5(family_weights, tmp_path):
    import shutil

    from transformers import CLIPImageProcessor, CLIPProcessor

    folder = shutil.copytree(family_weights("clip"), tmp_path / "clip")
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(**FASHION_STATS), tokenizer=tiny_clip_tokenizer())
    processor.save_pretrained(str(folder))
    assert not os.path.exists(folder / "preprocessor_config.json")
    stats = image_stats(*weights_of("clip", folder), "cn_clip")
    assert stats == (tuple(FASHION_STATS["image_mean"]), tuple(FASHION_STATS["image_std"]))
