"""Where the weights of each backbone family come from (`WEIGHTS_HELP`) and the check, before any process
starts, that model.backbone.pretrained can be them; reads at most a config.json. model.family=cope has two
sources: its X-CLIP visual tower in model.backbone.pretrained, its RBT3 text tower in model.cope.text_pretrained
(`COPE_TEXT_HELP`, `check_cope_text_weights`, `cope_sources`)."""
import json
import os

from datasets.families import HF_MODEL_TYPES

# the model_type of the folder that model.backbone.pretrained names for each family reading one
FOLDER_MODEL_TYPES = {**HF_MODEL_TYPES, "cope": "xclip"}
# the families that may start from random weights (model.backbone.pretrained=null)
RANDOM_INIT = ("chinese_clip", "cope")

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
    "cope": (
        "COPE's visual tower is X-CLIP, published on Hugging Face as microsoft/xclip-base-patch16 (8 frames): download "
        "it with `hf download microsoft/xclip-base-patch16 --local-dir DIR` and point model.backbone.pretrained at "
        "DIR, or set model.backbone.pretrained=null for a random tower (model.cope.xclip_overrides)"),
}
COPE_TEXT_HELP = (
    "COPE's text tower is cn_clip's RBT3 (3-layer RoBERTa): download the Chinese-CLIP release checkpoint for RN50 "
    "(clip_cn_rn50.pt, linked from the model download table of https://github.com/OFA-Sys/Chinese-CLIP), whose text "
    "tower it is, and point model.cope.text_pretrained at it, or set model.cope.text_pretrained=null for random "
    "weights")


def _weights_error(family, path, what):
    shown = "null" if path is None else path
    return FileNotFoundError(f"model.backbone.pretrained={shown}: {what}; {WEIGHTS_HELP[family]}")


def check_weights(family, pretrained):
    """Fail fast (FileNotFoundError, or ValueError for a folder of another model) when `pretrained`
    (model.backbone.pretrained) cannot be the weights of `family` (model.family)."""
    if pretrained is None:
        if family in RANDOM_INIT:
            return
        raise _weights_error(family, pretrained, f"model.family={family} has no random initialisation, it needs "
                                                 "the released weights")
    if family in FOLDER_MODEL_TYPES:
        if not os.path.exists(pretrained):
            raise _weights_error(family, pretrained, "folder not found")
        if not os.path.isdir(pretrained):
            raise _weights_error(family, pretrained, "not a folder (expected a transformers save_pretrained folder)")
        config = os.path.join(pretrained, "config.json")
        if not os.path.isfile(config):
            raise _weights_error(family, pretrained, "no config.json in this folder (expected a transformers "
                                                     "save_pretrained folder)")
        with open(config, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
        if model_type != FOLDER_MODEL_TYPES[family]:
            raise ValueError(f"model.backbone.pretrained={pretrained}: config.json describes a {model_type!r} model, "
                             f"model.family={family} expects {FOLDER_MODEL_TYPES[family]!r}; {WEIGHTS_HELP[family]}")
    elif os.path.isdir(pretrained):
        raise _weights_error(family, pretrained, "a folder, expected the checkpoint file")
    elif not os.path.isfile(pretrained):
        raise _weights_error(family, pretrained, "file not found")


def check_cope_text_weights(path):
    """FileNotFoundError unless model.cope.text_pretrained is null (random) or a file."""
    if path is None:
        return
    what = "a folder, expected the checkpoint file" if os.path.isdir(path) else "file not found"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.cope.text_pretrained={path}: {what}; {COPE_TEXT_HELP}")


def cope_sources(visual, text):
    """The line saying where each part of a cope model comes from: visual (model.backbone.pretrained) and text
    (model.cope.text_pretrained), None for random weights."""
    visual = f"from {visual}" if visual else "random (model.cope.xclip_overrides)"
    text = f"from the text tower of {text}" if text else "random (model.cope.text_overrides)"
    return (f"model.family=cope: visual tower X-CLIP {visual}; text tower RBT3 {text}"
            "; projection heads, fusion encoder and class centres new")
