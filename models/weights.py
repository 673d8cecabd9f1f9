"""Where the weights of each backbone family come from (`WEIGHTS_HELP`) and the check, before any process
starts, that model.backbone.pretrained can be them; reads at most a config.json."""
import json
import os

from datasets.families import HF_MODEL_TYPES

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


def check_weights(family, pretrained):
    """Fail fast (FileNotFoundError, or ValueError for a folder of another model) when `pretrained`
    (model.backbone.pretrained) cannot be the weights of `family` (model.family)."""
    if pretrained is None:
        if family == "chinese_clip":
            return
        raise _weights_error(family, pretrained, f"model.family={family} has no random initialisation, it needs "
                                                 "the released weights")
    if family in HF_MODEL_TYPES:
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
        if model_type != HF_MODEL_TYPES[family]:
            raise ValueError(f"model.backbone.pretrained={pretrained}: config.json describes a {model_type!r} model, "
                             f"model.family={family} expects {HF_MODEL_TYPES[family]!r}; {WEIGHTS_HELP[family]}")
    elif os.path.isdir(pretrained):
        raise _weights_error(family, pretrained, "a folder, expected the checkpoint file")
    elif not os.path.isfile(pretrained):
        raise _weights_error(family, pretrained, "file not found")
