"""The checks of a run before any work, shared by both command lines and the launch scripts' `--check`:
config validation (the allowed values come from the registries of the modules implementing them), the
file preflight, and one mapping from a failure to its message and exit code (`run_cli`)."""
import logging
import os
import sys

import torch

from datasets.annotations import DIRECTIONS, AnnotationError, DatasetPaths, iter_lines
from datasets.eval_dataset import TEST_FRAMES, TEST_TEXTS
from datasets.families import CHINESE_FAMILIES, ENGLISH_FAMILIES, FAMILIES, HF_MODEL_TYPES
from datasets.frames import FRAME_SOURCES, UnreadableImage
from datasets.packed import DATA_FORMATS, check_packed, run_lists
from datasets.transforms import PREPROCESS_PROFILES
from datasets.translations import ENGLISH_RULES, is_line_aligned, read_translations
from engine.run_dir import RunDirError, config_changes
from engine.tasks import TASKS, TRAIN_MODES
from engine.trainer import AMP_DTYPES, OPTIMIZERS, NonFiniteLoss
from evaluate.features import DTYPES, DiskFull, NonFiniteFeatures
from evaluate.metrics import SEARCH_KS, search_ks
from evaluate.pipeline import FEATURE_CHOICES, FolderInUse
from evaluate.search import INDEXES
from losses.query_contrastive import NEGATIVES
from models.families import FREEZE_PARTS
from models.fusion import FUSIONS, TEXT_INPUTS
from models.pretrain import STAGE_TERMS
from models.backbone import clip_arguments
from models.video_pooling import POOLINGS
from models.weights import WEIGHTS_HELP, check_cope_text_weights, check_weights, cope_sources
from utils.checkpoint import (CheckpointFileError, CheckpointWriteError, WeightsMismatch, read_torch_file,
                              resume_candidates)
from utils.config import ConfigError, load_config
from utils.distributed import BACKENDS, UnsupportedGPU, write_error_file
from utils.logging import LOGGER_NAME
from utils.schedule import SCHEDULES

log = logging.getLogger(LOGGER_NAME)

# allowed values of each enumerated setting; for a list setting, of each of its elements
CHOICES = {
    ("task",): TASKS,
    ("dist_backend",): BACKENDS,
    ("data", "frame_source"): FRAME_SOURCES,
    ("data", "format"): DATA_FORMATS,
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
    ("train", "schedule"): SCHEDULES,
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
    check_data_format(cfg["data"])
    ratio = cfg["model"]["recon"]["vision_mask_ratio"]
    if not 0 < ratio <= 1:
        raise ConfigError(f"model.recon.vision_mask_ratio={ratio!r}: expected a value in (0, 1]")
    t = cfg["train"]
    for key in ("epochs", "batch_size", "accum_steps", "save_every_steps", "keep_last", "log_every"):
        if t[key] is None or t[key] < 1:
            raise ConfigError(f"train.{key}={t[key]!r}: expected an integer >= 1")
    if t["batch_size"] % t["accum_steps"]:
        raise ConfigError(f"train.accum_steps={t['accum_steps']} must divide train.batch_size={t['batch_size']} "
                          "(the per-process batch of one optimizer step, cut into equal micro-batches)")
    for key in ("max_steps", "threads"):
        if t[key] is not None and t[key] < 1:
            raise ConfigError(f"train.{key}={t[key]!r}: expected null or an integer >= 1")
    minutes = t["save_every_minutes"]
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0):
        raise ConfigError(f"train.save_every_minutes={minutes!r}: expected null (off) or a number of minutes > 0")
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
    if family in CHINESE_FAMILIES:
        for key in ("translations", "english_suffix"):
            if cfg["data"][key]:
                raise ConfigError(f"data.{key} is for the English-text families "
                                  f"({', '.join(ENGLISH_FAMILIES)}); model.family={family} reads the Chinese texts")
    if family == "cope":
        _check_cope(cfg)
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
    if not cfg["model"]["backbone"]["text_attention_mask"] and t["accum_steps"] > 1:
        raise ConfigError("model.backbone.text_attention_mask=false cuts each batch to its longest text, so a "
                          "micro-batch would attend other padding than the whole batch: it needs train.accum_steps=1")
    if not cfg["model"]["backbone"]["text_attention_mask"] and (family != "chinese_clip" or cfg["task"] != "retrieval"):
        raise ConfigError("model.backbone.text_attention_mask=false (the authors' unmasked text tower) is for "
                          "task=retrieval with model.family=chinese_clip")
    if cfg["task"] == "pretrain" and cfg["model"]["fusion"]["text_input"] != "layer6":
        raise ConfigError("task=pretrain trains the fusion encoder on the states entering the copied layers: "
                          "model.fusion.text_input must be layer6")
    _check_ranges(cfg)
    if cfg["task"] == "pretrain":
        if cfg["model"]["fusion"]["type"] != "fusion":
            raise ConfigError(f"task=pretrain trains the fusion encoder: model.fusion.type="
                              f"{cfg['model']['fusion']['type']!r} must be 'fusion'")
        if cfg["pretrain"]["stage"] == "2" and cfg["init_from"] is None and cfg["resume"] is None:
            raise ConfigError("pretrain.stage=2 trains EPL on frozen towers: set init_from to a stage-1 checkpoint")
        if not 0 < cfg["pretrain"]["mlm_prob"] < 1:
            raise ConfigError(f"pretrain.mlm_prob={cfg['pretrain']['mlm_prob']!r}: expected a share in (0, 1)")


def _check_cope(cfg):
    """The settings model.family=cope runs with (models/cope.py, losses/cope.py)."""
    mode, lc = cfg["train"]["mode"], cfg["loss"]["cope"]
    if mode == "infer":
        raise ConfigError("model.family=cope has no released weights to evaluate untrained: train.mode must be ft or "
                          "query")
    if cfg["loss"]["recon"]:
        raise ConfigError("model.family=cope has no reconstruction heads: set loss.recon=false")
    if cfg["data"]["num_frames"] < 2:
        raise ConfigError(f"data.num_frames={cfg['data']['num_frames']}: model.family=cope tells a micro-video (T > 1) "
                          "from a goods item (T = 1) by its frame count; expected at least 2")
    if not 0 <= lc["cls_momentum"] < 1:
        raise ConfigError(f"loss.cope.cls_momentum={lc['cls_momentum']!r}: expected a value in [0, 1)")


def _check_ranges(cfg):
    """Sizes and factors out of range, each of which would otherwise fail (or divide by zero) after torchrun."""
    d, m, e = cfg["data"], cfg["model"], cfg["eval"]
    ranges = [("data.num_frames", d["num_frames"], 1), ("data.num_workers", d["num_workers"], 0),
              ("data.image_size", d["image_size"], 1), ("data.text_max_len", d["text_max_len"], 1),
              # [CLS] and [SEP] around at least one token
              ("data.query_max_len", d["query_max_len"], 3), ("model.embed_dim", m["embed_dim"], 1),
              ("model.video.ftt_heads", m["video"]["ftt_heads"], 1),
              ("eval.batch_size", e["batch_size"], 1), ("eval.page_topk", e["page_topk"], 1)]
    temperatures = [("loss.temperature", cfg["loss"]["temperature"])]
    weights = [("loss", cfg["loss"]["weights"]), ("pretrain", cfg["pretrain"]["weights"])]
    if m["family"] == "cope":
        c, lc = m["cope"], cfg["loss"]["cope"]
        ranges += [("model.cope.fusion_layers", c["fusion_layers"], 1),
                   ("model.cope.fusion_heads", c["fusion_heads"], 1),
                   ("loss.cope.num_classes", lc["num_classes"], 1), ("loss.cope.cls_negatives", lc["cls_negatives"], 0)]
        temperatures.append(("loss.cope.cls_temperature", lc["cls_temperature"]))
        weights.append(("loss.cope", lc["weights"]))
    for key, value, low in ranges:
        if value < low:
            raise ConfigError(f"{key}={value!r}: expected an integer >= {low}")
    if m["video"]["pooling"] == "ftt" and m["embed_dim"] % m["video"]["ftt_heads"]:
        raise ConfigError(f"model.video.ftt_heads={m['video']['ftt_heads']}: expected a divisor of model.embed_dim="
                          f"{m['embed_dim']} (the width of the frame transformer)")
    if m["family"] == "cope" and m["embed_dim"] % m["cope"]["fusion_heads"]:
        raise ConfigError(f"model.cope.fusion_heads={m['cope']['fusion_heads']}: expected a divisor of model.embed_dim="
                          f"{m['embed_dim']}")
    for key, value in temperatures:
        if not value > 0:
            raise ConfigError(f"{key}={value!r}: expected a temperature > 0")
    for section, section_weights in weights:
        for name, weight in section_weights.items():
            if not weight >= 0:
                raise ConfigError(f"{section}.weights.{name}={weight!r}: expected a loss weight >= 0")
    scale = d["crop_scale"]
    if not (len(scale) == 2 and all(isinstance(v, (int, float)) for v in scale) and 0 < scale[0] <= scale[1] <= 1):
        raise ConfigError(f"data.crop_scale={scale!r}: expected a pair [a, b] with 0 < a <= b <= 1")
    topk = e["topk"]
    if topk is not None and not (isinstance(topk, list) and topk and
                                 all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in topk)):
        raise ConfigError(f"eval.topk={topk!r}: expected a non-empty list of integers >= 1, or null for R@K at "
                          f"K = {', '.join(map(str, SEARCH_KS))}")
    if e["index"] == "ivf_pq":
        ivf = e["ivf_pq"]
        for key in ("nlist", "m", "nprobe"):
            if ivf[key] < 1:
                raise ConfigError(f"eval.ivf_pq.{key}={ivf[key]!r}: expected an integer >= 1")
        if m["embed_dim"] % ivf["m"]:
            raise ConfigError(f"eval.ivf_pq.m={ivf['m']}: expected a divisor of model.embed_dim={m['embed_dim']} "
                              "(each sub-quantizer codes an equal slice of a feature)")
    if m["family"] == "chinese_clip":
        _check_cn_clip_sizes(cfg)


def _check_cn_clip_sizes(cfg):
    """data.image_size and the text lengths against the named cn_clip configs (the other families' towers are read
    from their weights, and models.families checks the lengths when building them)."""
    d, b = cfg["data"], cfg["model"]["backbone"]
    args = clip_arguments(b["vision_model"], b["text_model"], d["image_size"], cfg["model"]["embed_dim"],
                          b["overrides"])
    patch = args["vision_patch_size"]
    if d["image_size"] % patch:
        raise ConfigError(f"data.image_size={d['image_size']}: expected a multiple of the vision patch size {patch} "
                          f"(model.backbone.vision_model={b['vision_model']}, overrides)")
    positions = args["text_max_position_embeddings"]
    for key in ("query_max_len", "text_max_len"):
        if d[key] > positions:
            raise ConfigError(f"data.{key}={d[key]}: expected at most {positions}, the position table of "
                              f"model.backbone.text_model={b['text_model']} (overrides included)")


# What transformers' CLIPTokenizer reads from a save_pretrained folder (either set), and the weights files
# CLIPModel / XCLIPModel.from_pretrained read (a sharded save writes the index). Checked here, with the files the
# run names, since models.weights.check_weights reads only config.json.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def check_folder_files(family, folder):
    """FileNotFoundError when a transformers folder of `family` lacks its tokenizer files or its weights (without
    the tokenizer files every text would be tokenised to the unknown id)."""
    if not any(all(os.path.isfile(os.path.join(folder, f)) for f in files) for files in TOKENIZER_FILES):
        raise FileNotFoundError(f"model.backbone.pretrained={folder}: no tokenizer files (expected tokenizer.json, or "
                                f"vocab.json and merges.txt); {WEIGHTS_HELP[family]}")
    if not any(os.path.isfile(os.path.join(folder, f)) for f in WEIGHTS_FILES):
        raise FileNotFoundError(f"model.backbone.pretrained={folder}: no weights (expected one of "
                                f"{', '.join(WEIGHTS_FILES)}); {WEIGHTS_HELP[family]}")


def stored_config(path, setting):
    """The config stored in checkpoint `path` (None for a checkpoint without one). The file is memory-mapped, so
    only the pickled part is read; a file torch cannot map (the pre-1.6 format) is read whole."""
    try:
        state = _mapped(path)
    except Exception:
        state = read_torch_file(path, "a checkpoint written by torch.save", setting)
    config = state.get("config") if isinstance(state, dict) else None
    return config if isinstance(config, dict) else None


def _mapped(path):
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _latest_checkpoint(output_dir):
    """The checkpoint resume=auto continues from, mapped as `stored_config` does: the newest that opens."""
    for path in resume_candidates(output_dir):
        try:
            state = _mapped(path)
        except Exception:  # unreadable: training skips it too (utils.checkpoint.find_latest_valid)
            continue
        return path, state.get("config") if isinstance(state, dict) else None
    return None, None


# the settings of an evaluated checkpoint's run that the evaluation must share: the model it builds and how
# items are encoded (its weights are replaced by the checkpoint's, and training settings do not matter)
EVAL_SHARED_PREFIXES = ("task", "model.", "data.image_size", "data.num_frames", "data.text_max_len",
                        "data.query_max_len", "data.preprocess", "data.test_frames", "data.test_text")
EVAL_FREE_KEYS = ("model.backbone.pretrained", "model.backbone.grad_checkpointing", "model.backbone.freeze")


def check_checkpoint_configs(cfg, evaluate):
    """ConfigError, in one line, when the checkpoint a run continues from (resume) or scores (eval.checkpoint) was
    written with settings this run cannot take: the comparison training and evaluation would make after torchrun."""
    if not evaluate and cfg["resume"] is not None:
        if cfg["resume"] == "auto":
            path, old = _latest_checkpoint(cfg["output_dir"])
        else:
            path, old = cfg["resume"], stored_config(cfg["resume"], "resume")
        changes = config_changes(old, cfg) if isinstance(old, dict) else []
        if changes:
            raise ConfigError(f"{path} was written by a run with other settings: {'; '.join(changes)}. Pick another "
                              f"output_dir, or pass resume=null to start afresh in {cfg['output_dir']}")
    checkpoint = cfg["eval"]["checkpoint"]
    if evaluate and checkpoint is not None:
        old = stored_config(checkpoint, "eval.checkpoint")
        changes = [c for c in config_changes(old, cfg) if c.startswith(EVAL_SHARED_PREFIXES)
                   and c.split(":")[0] not in EVAL_FREE_KEYS] if old is not None else []
        if changes:
            raise ConfigError(f"eval.checkpoint={checkpoint} was trained with other model or input settings: "
                              f"{'; '.join(changes)}. Evaluate with its config (the one in its run folder)")


def check_gallery_size(cfg, paths):
    """eval.ivf_pq and eval.topk against the number of items of eval.direction's gallery list."""
    e = cfg["eval"]
    gallery = paths.gallery_list(e["direction"])
    size = sum(1 for _ in iter_lines(gallery))
    if e["index"] == "ivf_pq":
        ivf = e["ivf_pq"]
        rows = min(ivf["train_rows"], size)
        # faiss's k-means needs at least as many points as centroids: nlist for the coarse quantizer, 256 for
        # each 8-bit sub-quantizer
        need = max(ivf["nlist"], 256)
        if rows < need:
            raise ConfigError(f"eval.ivf_pq: nlist={ivf['nlist']}, train_rows={ivf['train_rows']} on a gallery of "
                              f"{size} items ({gallery}) trains on {rows} rows: expected at least {need} (nlist and "
                              "256, the codes of a sub-quantizer); use eval.index=flat for a small gallery")
    ks = search_ks(e["topk"])
    if ks[-1] > size:
        topk = e["topk"] if e["topk"] is not None else f"null (K = {', '.join(map(str, ks))})"
        log.warning("warning: eval.topk=%s: K above the %d items of the gallery (%s) counts every item as found",
                    topk, size, gallery)


def check_data_format(data):
    """data.format, data.lmdb_root and data.fast_decode together."""
    if data["format"] == "lmdb" and not data["lmdb_root"]:
        raise ConfigError("data.format=lmdb needs data.lmdb_root: the folder scripts/pack_dataset.py wrote")
    if data["format"] == "lmdb" and data["frame_source"] == "raw":
        raise ConfigError("data.format=lmdb packs frame images; data.frame_source=raw reads .mp4 files: use "
                          "data.frame_source=images")
    if data["format"] == "lmdb" and data["english_suffix"]:
        raise ConfigError("data.format=lmdb packs the Chinese item texts only; data.english_suffix reads other "
                          "files: use data.format=files or a translation table (data.translations)")
    if data["fast_decode"] is not None and not isinstance(data["fast_decode"], bool):
        raise ConfigError(f"data.fast_decode={data['fast_decode']!r}: expected null (on for training, off for "
                          "evaluation), true or false")
    if data["fast_decode"] and data["preprocess"] == "authors":
        raise ConfigError("data.fast_decode=true with data.preprocess=authors: the authors' pixels need every "
                          "frame decoded whole; set data.fast_decode=null or false")


def preflight(cfg, evaluate=False):
    """Every file a run needs, checked in a second before any process group or model exists: the checkpoints
    to continue from or start with (and the settings stored in them), the data folder and its list files (the
    training file, or the lists of eval.direction, with the index settings against the gallery size), every
    weights file the config names (and a transformers folder's tokenizer), the translation table."""
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
    if data["format"] == "lmdb":
        check_packed(data["lmdb_root"], paths, run_lists(paths, evaluate, cfg["eval"]["direction"]))
    family, pretrained = cfg["model"]["family"], cfg["model"]["backbone"]["pretrained"]
    check_weights(family, pretrained)
    if family in HF_MODEL_TYPES:
        check_folder_files(family, pretrained)
    if family == "cope":
        check_cope_text_weights(cfg["model"]["cope"]["text_pretrained"])
    if data["translations"] and not os.path.isfile(data["translations"]):
        raise FileNotFoundError(f"data.translations={data['translations']}: file not found (format: docs/TRANSLATIONS.md)")
    if data["translations"] and not is_line_aligned(data["translations"]):
        read_translations(data["translations"])  # a malformed table: TranslationError naming file:line
    if evaluate and cfg["eval"]["checkpoint"] is not None and not os.path.isfile(cfg["eval"]["checkpoint"]):
        raise FileNotFoundError(f"eval.checkpoint={cfg['eval']['checkpoint']}: file not found")
    check_checkpoint_configs(cfg, evaluate)
    if evaluate:
        check_gallery_size(cfg, paths)


def text_warning(cfg):
    """The start-up line of the launch check and of rank 0: the warning for an English-text family on untranslated
    (Chinese) text, or where each part of a cope model comes from; None otherwise."""
    family = cfg["model"]["family"]
    if family == "cope":
        return cope_sources(cfg["model"]["backbone"]["pretrained"], cfg["model"]["cope"]["text_pretrained"])
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


# the exit code of a failure in what the run was given, as argparse's usage errors; a failed run exits 1
INPUT = 2
# Each failure, first match first: (exceptions, how it is reported, exit code). "log": through the run's logger,
# which has already said where the run stands; otherwise printed to stderr after that prefix.
FAILURES = (
    (ConfigError, "config error", INPUT),
    (NonFiniteFeatures, "error", 1),
    ((DiskFull, FolderInUse), "error", 1),
    # ValueError: also weights of another model family (check_weights), sizes that do not fit them, and the
    # subclasses AnnotationError, WeightsMismatch, CheckpointFileError
    ((FileNotFoundError, UnsupportedGPU, RunDirError, AnnotationError, WeightsMismatch, CheckpointFileError,
      UnreadableImage, ValueError), "error", INPUT),
    ((NonFiniteLoss, CheckpointWriteError), "log", 1),
)


def run_cli(fn, *args):
    """fn(*args) -> its exit code, or the exit code of its failure (FAILURES), reported in one line.
    Under torchrun (which sets TORCHELASTIC_ERROR_FILE per worker) the line goes to that file instead of stderr:
    the launcher (utils.distributed.torchrun) then prints one line for all the ranks, last."""
    try:
        return fn(*args)
    except Exception as e:
        for kinds, prefix, code in FAILURES:
            if isinstance(e, kinds):
                line = f"{'error' if prefix == 'log' else prefix}: {e}"
                if prefix == "log":
                    log.error("%s", e)
                if os.environ.get("TORCHELASTIC_ERROR_FILE"):
                    write_error_file(os.environ["TORCHELASTIC_ERROR_FILE"], line, code)
                elif prefix != "log":
                    print(line, file=sys.stderr)
                return code
        raise
