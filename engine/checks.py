"""The checks of a run before any work, shared by both command lines and the launch scripts' `--check`:
config validation (the allowed values come from the registries of the modules implementing them), the
file preflight, and one mapping from a failure to its message and exit code (`run_cli`)."""
import logging
import os
import sys

from datasets.annotations import DIRECTIONS, AnnotationError, DatasetPaths
from datasets.eval_dataset import TEST_FRAMES, TEST_TEXTS
from datasets.families import ENGLISH_FAMILIES, FAMILIES
from datasets.frames import FRAME_SOURCES
from datasets.transforms import PREPROCESS_PROFILES
from datasets.translations import ENGLISH_RULES
from engine.run_dir import RunDirError
from engine.tasks import TASKS, TRAIN_MODES
from engine.trainer import AMP_DTYPES, OPTIMIZERS, NonFiniteLoss
from evaluate.features import DTYPES, NonFiniteFeatures
from evaluate.pipeline import FEATURE_CHOICES
from evaluate.search import INDEXES
from losses.query_contrastive import NEGATIVES
from models.families import FREEZE_PARTS
from models.fusion import FUSIONS, TEXT_INPUTS
from models.pretrain import STAGE_TERMS
from models.video_pooling import POOLINGS
from models.weights import check_weights
from utils.checkpoint import CheckpointFileError, CheckpointWriteError, WeightsMismatch
from utils.config import ConfigError, load_config
from utils.distributed import BACKENDS, UnsupportedGPU
from utils.logging import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)

# allowed values of each enumerated setting; for a list setting, of each of its elements
CHOICES = {
    ("task",): TASKS,
    ("dist_backend",): BACKENDS,
    ("data", "frame_source"): FRAME_SOURCES,
    ("data", "preprocess"): PREPROCESS_PROFILES,
    ("data", "test_frames"): TEST_FRAMES,
    ("data", "test_text"): TEST_TEXTS,
    ("data", "english_rule"): ENGLISH_RULES,
    ("model", "family"): FAMILIES,
    ("model", "backbone", "freeze"): FREEZE_PARTS,
    ("model", "video", "pooling"): POOLINGS,
    ("model", "fusion", "type"): FUSIONS,
    ("model", "fusion", "text_input"): TEXT_INPUTS,
    ("loss", "negatives"): NEGATIVES,
    ("train", "mode"): TRAIN_MODES,
    ("train", "optimizer"): OPTIMIZERS,
    ("train", "amp"): AMP_DTYPES,
    ("eval", "feature"): FEATURE_CHOICES,
    ("eval", "dtype"): DTYPES,
    ("eval", "direction"): DIRECTIONS,
    ("eval", "index"): INDEXES,
    ("pretrain", "stage"): STAGE_TERMS,
}


def validate_config(cfg, evaluate=False):
    """Reject values the training loop (or, with `evaluate`, the evaluator) cannot run with, before any work
    is done. The files the config names are checked by `preflight`."""
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
    """Every file a run needs, checked in a second before any process group or model exists: the checkpoints
    to continue from or start with, the data folder and its list files (the training file, or the lists of
    eval.direction), every weights file the config names, the translations."""
    if cfg["resume"] not in (None, "auto") and not os.path.isfile(cfg["resume"]):
        raise ConfigError(f"resume={cfg['resume']!r}: expected null, auto or an existing checkpoint file")
    if cfg["init_from"] is not None and not os.path.isfile(cfg["init_from"]):
        raise ConfigError(f"init_from={cfg['init_from']!r}: checkpoint file not found")
    data = cfg["data"]
    if not os.path.isdir(data["root"]):
        raise FileNotFoundError(f"data.root={data['root']}: folder not found (a relative path is taken from the "
                                "directory the command was started in)")
    paths = DatasetPaths.from_config(data)
    if evaluate:
        paths.require(*paths.direction_files(cfg["eval"]["direction"]))
    else:
        paths.require(paths.train_file)
    check_weights(cfg["model"]["family"], cfg["model"]["backbone"]["pretrained"])
    if data["translations"] and not os.path.isfile(data["translations"]):
        raise FileNotFoundError(f"data.translations={data['translations']}: file not found (format: docs/TRANSLATIONS.md)")
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


def checked_config(config_path, overrides, evaluate=False):
    """The resolved config of a run, validated and its files checked (ConfigError, FileNotFoundError, ...)."""
    cfg = load_config(config_path, overrides)
    validate_config(cfg, evaluate)
    preflight(cfg, evaluate)
    return cfg


# INPUT: the failure is in what the run was given; the exit code is the command line's (run_cli's input_code).
INPUT = "input"
# Each failure, first match first: (exceptions, how it is reported, exit code). "log": through the run's logger,
# which has already said where the run stands; otherwise printed to stderr after that prefix.
FAILURES = (
    (ConfigError, "config error", INPUT),
    (NonFiniteFeatures, "error", 1),
    # ValueError: also weights of another model family (check_weights), sizes that do not fit them, and the
    # subclasses AnnotationError, WeightsMismatch, CheckpointFileError
    ((FileNotFoundError, UnsupportedGPU, RunDirError, AnnotationError, WeightsMismatch, CheckpointFileError,
      ValueError), "error", INPUT),
    ((NonFiniteLoss, CheckpointWriteError), "log", 1),
)


def run_cli(fn, *args, input_code=2):
    """fn(*args) -> its exit code, or the exit code of its failure (FAILURES), reported in one line.

    input_code: the exit code of a failure in the run's input (2 for main_cross_domain_emb.py; evaluation.py
    exits 1)."""
    try:
        return fn(*args)
    except Exception as e:
        for kinds, prefix, code in FAILURES:
            if isinstance(e, kinds):
                if prefix == "log":
                    log.error("%s", e)
                else:
                    print(f"{prefix}: {e}", file=sys.stderr)
                return input_code if code == INPUT else code
        raise
