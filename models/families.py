"""The pre-trained backbone families of Table 2 (`model.family`): which weights each reads, the check of
those weights before any process starts, the towers, the tokenizer and the pixel statistics.

- chinese_clip: Chinese-CLIP (cn_clip) ViT + RoBERTa, models.backbone; a release checkpoint file, or null
  for random weights. Reads Chinese; the other four read English (data.translations).
- clip: OpenAI CLIP (`openai/clip-vit-base-patch16`), transformers' CLIPModel, from a save_pretrained folder.
- fashionclip: FashionCLIP (`patrickjohncyh/fashion-clip`), a CLIP ViT-B/32 fine-tuned on fashion products,
  same format and class.
- xclip: X-CLIP (`microsoft/xclip-base-patch16` or `-patch32`), transformers' XCLIPModel. As in the paper,
  an image is a one-frame video: every frame goes through X-CLIP's video encoder alone, and the frames of
  a micro-video are averaged afterwards by the caller.
- cyclip: CyCLIP (Goel et al., NeurIPS 2022). The README of https://github.com/goel-shashank/CyCLIP links
  its pre-trained checkpoints from a Google Drive folder
  (https://drive.google.com/drive/u/0/folders/1K0kPJZ3MA4KAdx3Fpq25dgW59wIf7M-x) without naming the
  architecture; the repository trains ResNet-50 by default (`--model_name RN50`) and its example notebook
  loads these checkpoints into RN50. Each file is what its training script saves,
  `torch.save({"epoch", "name", "state_dict", "optimizer"})`, the state dict with DDP's `module.` prefix
  and OpenAI CLIP's parameter names; open_clip builds the model from it (ResNet or ViT, inferred from
  the tensors) and its bundled BPE vocabulary (OpenAI CLIP's) tokenizes.

Backbone protocol (models.qcd calls it on every family; the wrappers are models.backbone.CNClipBackbone
and models.english_backbones):
- `encode_frames(images [N,3,H,W], normalised)` -> `(proj [N, embed_dim], tokens [N, 1+P, vision_width])`:
  the library's own projected image feature (before L2 normalisation) and the vision tower's final token
  states, index 0 a global token (ViT: [CLS]; ResNet: the mean of the last feature map) and 1: the P patches.
- `encode_text(input_ids, attention_mask, keep_layer=None)` -> `(proj [B, embed_dim], hidden [B, L, text_width],
  kept)`: the library's projected text feature, the last hidden states and, for chinese_clip only, the
  hidden state entering layer `keep_layer` (the fusion encoder's input); the others raise ValueError for it.
- `vision_width`, `num_patches`, `text_width`, `vocab_size`, `context_length` (most text tokens the text tower
  takes), `embed_dim`, `image_size`, and `visual_prefixes` (parameter-name prefixes of the visual tower,
  relative to the backbone, for the optimizer's train.lr_visual group).
- model.backbone.freeze and grad_checkpointing are honoured; the towers' own logit_scale is not trained.
"""
import json
import os

FAMILIES = ("chinese_clip", "clip", "cyclip", "fashionclip", "xclip")
ENGLISH_FAMILIES = tuple(f for f in FAMILIES if f != "chinese_clip")
# transformers save_pretrained folders and the model_type their config.json must name
HF_MODEL_TYPES = {"clip": "clip", "fashionclip": "clip", "xclip": "xclip"}

WEIGHTS_HELP = {
    "chinese_clip": (
        "download the Chinese-CLIP release checkpoint for ViT-B-16 (clip_cn_vit-b-16.pt, linked from the "
        "model download table of https://github.com/OFA-Sys/Chinese-CLIP) and point model.backbone.pretrained at "
        "it, or set model.backbone.pretrained=null for random weights"),
    "clip": (
        "OpenAI CLIP is published on Hugging Face as openai/clip-vit-base-patch16 (or another OpenAI CLIP checkpoint "
        "in transformers format): download it with `hf download openai/clip-vit-base-patch16 --local-dir DIR` (or "
        "save CLIPModel and its tokenizer with save_pretrained(DIR)) and point model.backbone.pretrained at DIR"),
    "fashionclip": (
        "FashionCLIP is published on Hugging Face as patrickjohncyh/fashion-clip: download it with "
        "`hf download patrickjohncyh/fashion-clip --local-dir DIR` (or save CLIPModel and its tokenizer with "
        "save_pretrained(DIR)) and point model.backbone.pretrained at DIR"),
    "xclip": (
        "X-CLIP is published on Hugging Face as microsoft/xclip-base-patch16 (or microsoft/xclip-base-patch32): "
        "download it with `hf download microsoft/xclip-base-patch16 --local-dir DIR` (or save XCLIPModel and "
        "its tokenizer with save_pretrained(DIR)) and point model.backbone.pretrained at DIR"),
    "cyclip": (
        "CyCLIP's pre-trained checkpoints are linked from the README of https://github.com/goel-shashank/CyCLIP "
        "(Google Drive folder https://drive.google.com/drive/u/0/folders/1K0kPJZ3MA4KAdx3Fpq25dgW59wIf7M-x): "
        "ResNet-50 CLIP models as its training script saves them (torch.save of {'epoch', 'name', 'state_dict', "
        "'optimizer'}, OpenAI CLIP parameter names); download one and point model.backbone.pretrained at that file"),
}


def _weights_error(family, path, what):
    shown = "null" if path is None else path
    return FileNotFoundError(f"model.backbone.pretrained={shown}: {what}; {WEIGHTS_HELP[family]}")


def _family(model_cfg):
    family = model_cfg["family"]
    if family not in FAMILIES:
        raise ValueError(f"model.family={family!r}: expected one of {', '.join(FAMILIES)}")
    return family


def check_weights(model_cfg):
    """Fail fast (FileNotFoundError, or ValueError for a folder of another model) when
    model.backbone.pretrained cannot be the weights of model.family; reads at most a config.json."""
    family = _family(model_cfg)
    path = model_cfg["backbone"]["pretrained"]
    if path is None:
        if family == "chinese_clip":
            return
        raise _weights_error(family, path, f"model.family={family} has no random initialisation, it needs the "
                                           "released weights")
    if family in HF_MODEL_TYPES:
        if not os.path.exists(path):
            raise _weights_error(family, path, "folder not found")
        if not os.path.isdir(path):
            raise _weights_error(family, path, "not a folder (expected a transformers save_pretrained folder)")
        config = os.path.join(path, "config.json")
        if not os.path.isfile(config):
            raise _weights_error(family, path, "no config.json in this folder (expected a transformers "
                                               "save_pretrained folder)")
        with open(config, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
        if model_type != HF_MODEL_TYPES[family]:
            raise ValueError(f"model.backbone.pretrained={path}: config.json describes a {model_type!r} model, "
                             f"model.family={family} expects {HF_MODEL_TYPES[family]!r}; {WEIGHTS_HELP[family]}")
    elif os.path.isdir(path):
        raise _weights_error(family, path, "a folder, expected the checkpoint file")
    elif not os.path.isfile(path):
        raise _weights_error(family, path, "file not found")


def check_sizes(cfg, backbone):
    """ValueError unless model.embed_dim, data.image_size and the text lengths fit the built backbone."""
    family = cfg["model"]["family"]
    path = cfg["model"]["backbone"]["pretrained"]
    source = f"the {family} weights at {path}" if path else f"the {family} model"
    if backbone.embed_dim != cfg["model"]["embed_dim"]:
        raise ValueError(f"model.embed_dim={cfg['model']['embed_dim']} differs from the projection size "
                         f"{backbone.embed_dim} of {source}; set model.embed_dim={backbone.embed_dim}")
    if backbone.image_size != cfg["data"]["image_size"]:
        raise ValueError(f"data.image_size={cfg['data']['image_size']} differs from the input size "
                         f"{backbone.image_size} of {source}; set data.image_size={backbone.image_size}")
    for key in ("query_max_len", "text_max_len"):
        if cfg["data"][key] > backbone.context_length:
            raise ValueError(f"data.{key}={cfg['data'][key]} exceeds the {backbone.context_length} tokens the text "
                             f"tower of {source} takes; set data.{key} to at most {backbone.context_length}")


def build_backbone(cfg):
    """The towers of model.family, with their weights, checked against the config's sizes."""
    family = _family(cfg["model"])
    check_weights(cfg["model"])
    if family == "chinese_clip":
        from models.backbone import CNClipBackbone

        backbone = CNClipBackbone(cfg)
    else:
        from models.english_backbones import BACKBONES

        backbone = BACKBONES[family](cfg)
    check_sizes(cfg, backbone)
    return backbone


def build_tokenizer(model_cfg):
    """A new tokenizer of model.family (datasets.tokenizer), with its own truncation counters."""
    from datasets.tokenizer import HFTokenizer, OpenClipTokenizer, Tokenizer

    family = _family(model_cfg)
    if family == "chinese_clip":
        return Tokenizer()
    if family == "cyclip":
        return OpenClipTokenizer()
    return HFTokenizer(model_cfg["backbone"]["pretrained"])


def image_stats(model_cfg, preprocess="cn_clip"):
    """(mean, std) of the pixel normalisation. A profile of data.preprocess that fixes its own (authors:
    ImageNet's) gives those for every family; otherwise the family's: a transformers folder's image processor
    (preprocessor_config.json as on the hub, or the image_processor of the processor_config.json that
    transformers 5 saves) when it has one, else OpenAI CLIP's (Chinese-CLIP and CyCLIP use those)."""
    from datasets.transforms import CLIP_MEAN, CLIP_STD, PROFILE_STATS, check_preprocess

    family = _family(model_cfg)
    check_preprocess(preprocess)
    if PROFILE_STATS[preprocess]:
        return PROFILE_STATS[preprocess]
    folder = model_cfg["backbone"]["pretrained"]
    if family not in HF_MODEL_TYPES or not folder:
        return CLIP_MEAN, CLIP_STD
    for name, section in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        if section:
            config = config.get(section)
            if config is None:
                continue
        stats = config.get("image_mean"), config.get("image_std")
        if not all(isinstance(s, list) and len(s) == 3 for s in stats):
            raise ValueError(f"{path}: expected image_mean and image_std lists of 3 values (RGB), got {stats[0]!r} "
                             f"and {stats[1]!r}")
        return tuple(float(v) for v in stats[0]), tuple(float(v) for v in stats[1])
    return CLIP_MEAN, CLIP_STD
