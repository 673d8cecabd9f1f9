"""Train the query-driven cross-domain embedding model (QCD) or pre-train (config key `task`), or
hand over to feature extraction.

    python main_cross_domain_emb.py --config configs/qcd_real400k.yaml [key.sub=value ...]
    torchrun --nproc_per_node=8 main_cross_domain_emb.py --config CFG [key=value ...]   (see train.sh)
    python main_cross_domain_emb.py --config CFG --evaluate [eval.checkpoint=...]

One process per GPU (NCCL), or CPU processes (gloo); the training loop is engine.Trainer.
"""
import argparse
import logging
import os
import sys

from datasets.annotations import AnnotationError
from datasets.transforms import PREPROCESS_PROFILES
from engine import TASKS, TRAIN_MODES, NonFiniteLoss, RunDirError, train
from models.families import ENGLISH_FAMILIES, FAMILIES, check_weights
from utils import checkpoint as ckpt
from utils.config import ConfigError, load_config
from utils.distributed import UnsupportedGPU, cleanup

log = logging.getLogger("qcd")

# allowed values of each enumerated setting; for a list setting, of each of its elements
CHOICES = {
    ("task",): TASKS,
    ("dist_backend",): ("auto", "nccl", "gloo"),
    ("data", "frame_source"): ("images", "raw"),
    ("data", "preprocess"): PREPROCESS_PROFILES,
    ("data", "test_frames"): ("centres", "authors"),
    ("data", "test_text"): ("fields", "authors_lines"),
    ("data", "english_rule"): ("per_field", "authors"),
    ("model", "family"): FAMILIES,
    ("model", "backbone", "freeze"): ("visual", "text"),
    ("model", "video", "pooling"): ("add", "mean", "lstm", "ftt", "mit"),
    ("model", "fusion", "type"): ("add", "attention", "combiner", "fusion"),
    ("model", "fusion", "text_input"): ("layer6", "final"),
    ("loss", "negatives"): ("local", "global"),
    ("train", "mode"): TRAIN_MODES,
    ("train", "optimizer"): ("adam", "adamw"),
    ("train", "amp"): ("bf16", "fp16", "none"),
    ("eval", "feature"): ("fused", "visual", "text", "all"),
    ("eval", "dtype"): ("float16", "float32"),
    ("eval", "direction"): ("video2goods", "goods2video"),
    ("eval", "index"): ("flat", "ivf_pq"),
    ("pretrain", "stage"): ("1", "2", "joint"),
}


# ----------------------------------------------------------------------------- config


def validate_config(cfg, evaluate=False):
    """Reject values the training loop (or, with `evaluate`, the evaluator) cannot run with, before any work
    is done."""
    for path, allowed in CHOICES.items():
        value = cfg
        for p in path:
            value = value[p]
        if isinstance(value, list):
            if not set(value) <= set(allowed):
                raise ConfigError(f"{'.'.join(path)}={value!r}: expected a list of any of {list(allowed)}")
        elif value not in allowed:
            raise ConfigError(f"{'.'.join(path)}={value!r}: expected one of {list(allowed)}")
    ratio = cfg["model"]["recon"]["vision_mask_ratio"]
    if not 0 < ratio <= 1:
        raise ConfigError(f"model.recon.vision_mask_ratio={ratio!r}: expected a value in (0, 1]")
    t = cfg["train"]
    for key in ("epochs", "batch_size", "save_every_steps", "keep_last", "log_every"):
        if t[key] is None or t[key] < 1:
            raise ConfigError(f"train.{key}={t[key]!r}: expected an integer >= 1")
    for key in ("max_steps", "threads"):
        if t[key] is not None and t[key] < 1:
            raise ConfigError(f"train.{key}={t[key]!r}: expected null or an integer >= 1")
    if not 0 <= t["warmup_ratio"] < 1:
        raise ConfigError(f"train.warmup_ratio={t['warmup_ratio']!r}: expected a share of the run in [0, 1)")
    for key in ("lr", "lr_visual", "lr_recon"):
        if not t[key] >= 0:
            raise ConfigError(f"train.{key}={t[key]!r}: expected a learning rate >= 0")
    lr_new = cfg["pretrain"]["lr_new"]
    if lr_new is not None and not lr_new >= 0:
        raise ConfigError(f"pretrain.lr_new={lr_new!r}: expected null (train.lr) or a learning rate >= 0")
    if not t["grad_clip"] >= 0:
        raise ConfigError(f"train.grad_clip={t['grad_clip']!r}: expected 0 (off) or a norm > 0")
    if not cfg["output_dir"]:
        raise ConfigError("output_dir is empty: expected a folder for checkpoints and logs")
    if cfg["resume"] not in (None, "auto") and not os.path.isfile(cfg["resume"]):
        raise ConfigError(f"resume={cfg['resume']!r}: expected null, auto or an existing checkpoint file")
    if cfg["init_from"] is not None and not os.path.isfile(cfg["init_from"]):
        raise ConfigError(f"init_from={cfg['init_from']!r}: checkpoint file not found")
    family, mode = cfg["model"]["family"], t["mode"]
    if family != "chinese_clip":
        if cfg["task"] != "retrieval":
            raise ConfigError(f"task={cfg['task']} runs on the chinese_clip family only (model.family={family})")
        if cfg["model"]["fusion"]["type"] == "fusion":
            raise ConfigError(f"model.fusion.type=fusion copies cn_clip's text layers: with model.family={family} "
                              "use add or combiner")
    else:
        for key in ("translations", "english_suffix"):
            if cfg["data"][key]:
                raise ConfigError(f"data.{key} is for the English-text families "
                                  f"({', '.join(ENGLISH_FAMILIES)}); model.family=chinese_clip reads the Chinese texts")
    if mode != "query" and cfg["task"] != "retrieval":
        raise ConfigError(f"train.mode={mode} is a retrieval setting; task={cfg['task']} needs train.mode=query")
    if mode == "ft" and cfg["loss"]["recon"]:
        raise ConfigError("train.mode=ft aligns goods and micro-videos without queries: set loss.recon=false "
                          "(the reconstruction heads decode queries)")
    if mode == "infer" and not evaluate:
        raise ConfigError("train.mode=infer has nothing to train: evaluate the released weights directly, e.g. "
                          "sh video2goods_evaluate.sh null CONFIG")
    if evaluate and cfg["init_from"] is not None:
        raise ConfigError(f"init_from={cfg['init_from']} initialises training; the evaluator loads the checkpoint "
                          "to score from eval.checkpoint (the CKPT argument of video2goods_evaluate.sh)")
    if not cfg["model"]["backbone"]["text_attention_mask"] and (family != "chinese_clip" or cfg["task"] != "retrieval"):
        raise ConfigError("model.backbone.text_attention_mask=false (the authors' unmasked text tower) is for "
                          "task=retrieval with model.family=chinese_clip")
    if cfg["task"] == "pretrain" and cfg["model"]["fusion"]["text_input"] != "layer6":
        raise ConfigError("task=pretrain trains the fusion encoder on the states entering the copied layers: "
                          "model.fusion.text_input must be layer6")
    if cfg["task"] == "pretrain":
        if cfg["model"]["fusion"]["type"] != "fusion":
            raise ConfigError(f"task=pretrain trains the fusion encoder: model.fusion.type="
                              f"{cfg['model']['fusion']['type']!r} must be 'fusion'")
        if cfg["pretrain"]["stage"] == "2" and cfg["init_from"] is None and cfg["resume"] is None:
            raise ConfigError("pretrain.stage=2 trains EPL on frozen towers: set init_from to a stage-1 checkpoint")
        if not 0 < cfg["pretrain"]["mlm_prob"] < 1:
            raise ConfigError(f"pretrain.mlm_prob={cfg['pretrain']['mlm_prob']!r}: expected a share in (0, 1)")


def preflight(cfg, evaluate=False):
    """The files a run needs, checked in a second before any process group or model exists: the data
    folder and its list files (the training file, or the lists of eval.direction) and every weights
    file the config names."""
    from datasets.annotations import DatasetPaths

    data = cfg["data"]
    if not os.path.isdir(data["root"]):
        raise FileNotFoundError(f"data.root={data['root']}: folder not found (a relative path is taken from the "
                                "directory the command was started in)")
    paths = DatasetPaths.from_config(data)
    if evaluate:
        paths.require(*paths.direction_files(cfg["eval"]["direction"]))
    else:
        paths.require(paths.train_file)
    check_weights(cfg["model"])
    if data["translations"] and not os.path.isfile(data["translations"]):
        raise FileNotFoundError(f"data.translations={data['translations']}: file not found (format: docs/TRANSLATIONS.md)")
    # init_from and resume files are checked by validate_config
    if evaluate and cfg["eval"]["checkpoint"] is not None and not os.path.isfile(cfg["eval"]["checkpoint"]):
        raise FileNotFoundError(f"eval.checkpoint={cfg['eval']['checkpoint']}: file not found")


def text_warning(cfg):
    """Start-up warning for an English-text family on untranslated (Chinese) text, or None."""
    family = cfg["model"]["family"]
    if family in ENGLISH_FAMILIES and not cfg["data"]["translations"] and not cfg["data"]["english_suffix"]:
        return (f"warning: model.family={family} reads English, and data.translations is not set: the item texts, "
                "and the queries without an English 4th field in the training list, go to its tokenizer in Chinese, "
                "so its text (and fused) features carry little more than noise. Set data.translations or "
                "data.english_suffix (docs/TRANSLATIONS.md) to compare with the paper's rows")
    return None


# ----------------------------------------------------------------------------- command line


def evaluate(cfg):
    """Hand over to the evaluator: write query and gallery features of eval.direction (all ranks)."""
    try:
        from evaluation import extract
    except ImportError as e:
        print(f"--evaluate: the feature extraction of evaluation.py is not available ({e})", file=sys.stderr)
        return 1
    from evaluate.features import NonFiniteFeatures
    try:
        extract(cfg)
    except NonFiniteFeatures as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        cleanup()
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="YAML experiment config (see configs/)")
    p.add_argument("--evaluate", action="store_true", help="extract the query and gallery features of eval.direction instead of training (evaluation.py scores them)")
    p.add_argument("--check", action="store_true", help="only check the config and the files it names, then exit (the launch scripts run this before torchrun)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        validate_config(cfg, args.evaluate)
        preflight(cfg, args.evaluate)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:  # ValueError: weights of another model family
        print(f"error: {e}", file=sys.stderr)
        return 2
    warning = text_warning(cfg)
    if warning and (args.check or os.environ.get("RANK", "0") == "0"):
        print(warning, file=sys.stderr)
    if args.check:
        return 0
    try:
        if args.evaluate:
            return evaluate(cfg)
        train(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (UnsupportedGPU, ckpt.WeightsMismatch, ckpt.CheckpointFileError, FileNotFoundError, RunDirError,
            AnnotationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLoss, ckpt.CheckpointWriteError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
