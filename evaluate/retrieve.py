"""A trained model outside a benchmark: load it and its preprocessing from a checkpoint, encode items
(images and text) and text queries, and search a folder of gallery features written by the extraction.

    cfg = retrieval_config("outputs/demo/checkpoint_latest.pth.tar")
    retriever = Retriever(cfg)
    hits = retriever.search("outputs/demo/eval/video2goods/fused/gallery", retriever.encode_query("red dress"))

An item is encoded as the evaluation dataset encodes the items of a list (datasets/eval_dataset.py): a
goods item from its image, a micro-video from its frames, of which data.num_frames are picked by the rule
of data.test_frames, each frame transformed by the family's evaluation preprocessing, the text tokenized
to data.text_max_len. Its features are the ones extraction writes for the same item, up to the float16
rounding of the files (and, with model.backbone.text_attention_mask=false, to the padding of the
extraction's batches, which the towers then attend).
"""
import json
import os
import tempfile

import numpy as np
import torch

from evaluate.extract import FEATURES, merged_paths
from evaluate.features import load_features
from evaluate.pipeline import load_eval_model, model_made_by
from evaluate.search import search_gallery

# the data settings that change how an item is encoded: a gallery made with others is not comparable
ENCODING_DATA = ("image_size", "num_frames", "text_max_len", "preprocess", "test_frames")


class ForeignFeatures(ValueError):
    """A features folder made by another checkpoint or model than the one searching it."""


def retrieval_config(checkpoint, config=None, overrides=()):
    """The config of the run that wrote `checkpoint` (stored in it, utils.checkpoint.TrainingCheckpoint),
    or the YAML file `config` for a checkpoint without one; `key=value` overrides on top. eval.checkpoint
    is `checkpoint`."""
    from utils.checkpoint import read_torch_file
    from utils.config import ConfigError, load_config, save_config

    if config is None:
        state = read_torch_file(checkpoint, "a training checkpoint of this project, which stores its config")
        stored = state.get("config") if isinstance(state, dict) else None
        if not isinstance(stored, dict):
            raise ConfigError(f"{checkpoint}: no config stored in the checkpoint (not one of this project's "
                              "training checkpoints): give the config of its model with --config")
        with tempfile.TemporaryDirectory() as tmp:
            config = os.path.join(tmp, "config.yaml")
            save_config({k: v for k, v in stored.items() if k != "config_path"}, config)
            cfg = load_config(config, overrides)
        cfg["config_path"] = stored.get("config_path")
    else:
        cfg = load_config(config, overrides)
    cfg["eval"]["checkpoint"] = os.path.abspath(checkpoint)
    return cfg


def gallery_feature(folder):
    """The feature of a features folder in the default layout (<out_dir>/{feature}/gallery), or None."""
    name = os.path.basename(os.path.dirname(os.path.abspath(folder)))
    return name if name in FEATURES else None


class Retriever:
    """The model of `cfg` with eval.checkpoint's weights, and the evaluation's preprocessing of its family."""

    def __init__(self, cfg, device=None):
        from datasets.eval_dataset import FRAME_RULES
        from datasets.loader import preprocessing
        from datasets.transforms import EvalClipTransform

        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_eval_model(cfg, self.device).eval()
        self.made_by = model_made_by(cfg)
        data, prep = cfg["data"], preprocessing(cfg)
        self.tokenizer = prep["make_tokenizer"]()
        self.translations = prep["translations"]
        self.transform = EvalClipTransform(data["image_size"], prep["preprocess"],
                                           *(prep["image_stats"] or (None, None)))
        self.frame_rule = FRAME_RULES[data["test_frames"]]

    @torch.no_grad()
    def encode_item(self, images, text=None, domain=None, text_file=None):
        """Image files of an item and its text (as the model reads it: a goods title, a video's composed
        text), or its text file (`text_file`, read by the evaluation's rule, datasets.eval_dataset.item_text)
        -> {feature: unit vector} for every feature of FEATURES. `domain`: "goods" or "video" (default:
        video for several images, goods for one)."""
        from datasets.eval_dataset import item_text
        from datasets.frames import load_image

        domain = domain or ("video" if len(images) > 1 else "goods")
        indices = self.frame_rule(len(images), self.cfg["data"]["num_frames"] if domain == "video" else 1)
        loaded = {i: load_image(images[i]) for i in dict.fromkeys(indices)}
        frames = self.transform([loaded[i] for i in indices])
        if text_file is not None:
            text = item_text(text_file, domain, self.cfg["data"]["test_text"], self.translations)
        elif self.translations:
            text = self.translations.item_text(text)
        ids, mask = self.tokenizer([text], self.cfg["data"]["text_max_len"])
        out = self.model.encode_item(frames[None].to(self.device), ids.to(self.device), mask.to(self.device))
        return {f: out[f][0].float().cpu().numpy() for f in FEATURES}

    @torch.no_grad()
    def encode_query(self, text):
        """A text query, tokenized to data.query_max_len as in training -> its unit vector."""
        ids, mask = self.tokenizer([text], self.cfg["data"]["query_max_len"])
        return self.model.encode_query(ids.to(self.device), mask.to(self.device))[0].float().cpu().numpy()

    def check_gallery(self, folder):
        """Refuse (ForeignFeatures) a features folder whose meta.json says another checkpoint, model or item
        encoding made it."""
        path = os.path.join(folder, "meta.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not found; expected a features folder written by `evaluation.py "
                                    "extract` (e.g. <eval.out_dir>/gallery)")
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        ours = dict(self.made_by, data={k: self.made_by["data"][k] for k in ENCODING_DATA})
        theirs = dict(meta, data={k: meta.get("data", {}).get(k) for k in ENCODING_DATA})
        differ = [k for k in ("checkpoint_sha256", "pretrained_sha256", "model", "data") if ours[k] != theirs.get(k)]
        if differ:
            raise ForeignFeatures(f"{folder}: its features were made by another model than "
                                  f"{self.cfg['eval']['checkpoint']} ({', '.join(differ)} differ; made from "
                                  f"{meta.get('checkpoint')}): extract them with this checkpoint first")

    def search(self, folder, vector, topk=10):
        """The top-k gallery items of `folder` for a query or item vector -> [(id, cosine score)], best first."""
        self.check_gallery(folder)
        feats, ids = load_features(*merged_paths(folder), mmap=True)
        scores, rows = search_gallery(np.asarray(vector, dtype=np.float32)[None], feats, topk)
        return [(ids[r], float(s)) for s, r in zip(scores[0], rows[0]) if r >= 0]
