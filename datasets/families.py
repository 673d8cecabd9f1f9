"""The data side of the backbone families (`model.family`): which language each reads, its tokenizer and its
pixel statistics. The towers and their weights are in models.families and models.weights.

- chinese_clip reads Chinese, cn_clip's vocabulary (datasets.tokenizer.Tokenizer), OpenAI CLIP's statistics.
- clip, fashionclip, xclip read English (data.translations), with the tokenizer and image processor of their
  transformers save_pretrained folder (model.backbone.pretrained).
- cyclip reads English with open_clip's bundled BPE vocabulary and OpenAI CLIP's statistics.
- cope reads Chinese (its RBT3 text tower has cn_clip's vocabulary), with the pixel statistics of the X-CLIP folder
  of its visual tower (model.backbone.pretrained; OpenAI CLIP's for a random tower).
"""
import json
import os

from datasets.tokenizer import HFTokenizer, OpenClipTokenizer, Tokenizer
from datasets.transforms import CLIP_MEAN, CLIP_STD, PROFILE_STATS

FAMILIES = ("chinese_clip", "clip", "cyclip", "fashionclip", "xclip", "cope")
CHINESE_FAMILIES = ("chinese_clip", "cope")
ENGLISH_FAMILIES = tuple(f for f in FAMILIES if f not in CHINESE_FAMILIES)
# transformers save_pretrained folders and the model_type their config.json must name
HF_MODEL_TYPES = {"clip": "clip", "fashionclip": "clip", "xclip": "xclip"}
# the families whose model.backbone.pretrained folder holds the image processor (cope: its X-CLIP visual tower)
PROCESSOR_FOLDERS = (*HF_MODEL_TYPES, "cope")
# family -> its tokenizer, built from model.backbone.pretrained
TOKENIZERS = {"chinese_clip": lambda pretrained: Tokenizer(), "cyclip": lambda pretrained: OpenClipTokenizer(),
              "cope": lambda pretrained: Tokenizer(), **{family: HFTokenizer for family in HF_MODEL_TYPES}}


def build_tokenizer(family, pretrained):
    """A new tokenizer of `family` (datasets.tokenizer), with its own truncation counters."""
    return TOKENIZERS[family](pretrained)


def image_stats(family, pretrained, preprocess="cn_clip"):
    """(mean, std) of the pixel normalisation. A profile of data.preprocess that fixes its own (authors:
    ImageNet's) gives those for every family; otherwise the family's: a transformers folder's image processor
    (preprocessor_config.json as on the hub, or the image_processor of the processor_config.json that
    transformers 5 saves) when it has one, else OpenAI CLIP's (Chinese-CLIP and CyCLIP use those)."""
    if PROFILE_STATS[preprocess]:
        return PROFILE_STATS[preprocess]
    if family not in PROCESSOR_FOLDERS or not pretrained:
        return CLIP_MEAN, CLIP_STD
    for name, section in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = os.path.join(pretrained, name)
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
