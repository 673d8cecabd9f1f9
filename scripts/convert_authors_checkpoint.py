"""Convert a checkpoint of the authors' code (PKU-ICST-MIPL/Real20M_ACMMM2023: `checkpoint.pth.tar`,
`pretrain.pth.tar`) into one that the evaluator (eval.checkpoint) and init_from load, with the config
that builds their computation.

    python scripts/convert_authors_checkpoint.py IN OUT --write-config OUT_CFG [--config configs/qcd_real400k.yaml]

Their file is a dict of DDP state dicts, one per module of their training script:
`state_dict` (the cn_clip visual tower), `doc_text_model` (a whole cn_clip model whose RoBERTa
and text projection are trained), `doc_fusion_model` (X-CLIP's multi-frame integration
transformer and a fusion of the text and video features) and, in some files,
`text_generation_model` (a transformers GPT-2 with cross-attention). Their code defines two
fusions, told apart by the keys: DocAttentionFusionModel (`attention_pooling.projection`, what
their training script trains) and BertXFusionModel (`attention_pooling.bert.*`, BERT layers with
cross-attention). OUT_CFG is `--config` plus the settings of AUTHORS_SETTINGS for that variant;
tensors are mapped by RULES onto the model OUT_CFG builds, shapes checked, and written as
{"model": state, "no_counterpart": {key: reason}}. The report lists every tensor of theirs that
was not mapped, and every tensor of this model that has no counterpart, each with its reason.
"""
import argparse
import os
import re
import sys
from collections import defaultdict

import torch
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from utils.checkpoint import NO_COUNTERPART, strip_module_prefix  # noqa: E402
from utils.config import flatten, load_config  # noqa: E402

ATTENTION, BERTX = "DocAttentionFusionModel", "BertXFusionModel"
MIT = r"video_attention_pooling\."
# their BertXFusionModel's BERT: the layers from this index on carry cross-attention (xbert's fusion_layer)
BERTX_FIRST_FUSION_LAYER = 6

# (entry of their checkpoint, key pattern after `module.`, our key: a template or a function of the match)
COMMON_RULES = [
    ("state_dict", r"visual_model\.(.+)", r"backbone.clip.visual.\1"),
    ("doc_text_model", r"clip_model\.bert\.(.+)", r"backbone.clip.bert.\1"),
    ("doc_text_model", r"text_projection", "backbone.clip.text_projection"),
    ("doc_text_model", r"clip_model\.logit_scale", "backbone.clip.logit_scale"),
    ("doc_fusion_model", MIT + r"positional_embedding", "video_pooling.positional_embedding"),
    ("doc_fusion_model", MIT + r"resblocks\.(\d+)\.(attn\.\w+(?:\.\w+)?|ln_1\.\w+|ln_2\.\w+)", r"video_pooling.blocks.\1.\2"),
    ("doc_fusion_model", MIT + r"resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"video_pooling.blocks.\1.mlp.0.\2"),
    ("doc_fusion_model", MIT + r"resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"video_pooling.blocks.\1.mlp.2.\2"),
    ("text_generation_model", r"gpt2_model\.(.+)", r"text_recon.decoder.\1"),
]


def _fusion_layer(m):
    """their BERT layer >= 6 -> our fusion layer (0-based); xbert's cross-attention keeps BertAttention's
    self/output split, ours is one module."""
    layer, rest = int(m.group(1)) - BERTX_FIRST_FUSION_LAYER, m.group(2)
    rest = re.sub(r"^crossattention\.(?:self|output)\.", "crossattention.", rest)
    return f"fusion.layers.{layer}.{rest}"


VARIANT_RULES = {
    ATTENTION: [("doc_fusion_model", r"attention_pooling\.projection\.(weight|bias)", r"fusion.projection.\1")],
    BERTX: [
        ("doc_fusion_model", r"attention_pooling\.bert\.encoder\.layer\.([6-9]|1\d)\.(.+)", _fusion_layer),
        ("doc_fusion_model", r"prompts_visual_ln\.(weight|bias)", r"fusion.visual_norm.\1"),
        ("doc_fusion_model", r"fc_fusion\.(weight|bias)", r"fusion.proj.\1"),
    ],
}

# their tensors that are not converted, and why
NOT_CONVERTED = [
    ("doc_text_model", r"text_model\..+", "the same tensors as clip_model.bert.* (an alias in their module)"),
    ("doc_text_model", r"clip_model\.text_projection", "the same tensor as text_projection (an alias in their module)"),
    ("doc_text_model", r"clip_model\.visual\..+",
     "the text model's own copy of the visual tower, left at its initial weights; the trained one is `state_dict`"),
    ("doc_fusion_model", r"attention_pooling\.bert\.embeddings\..+",
     "their fusion BERT's embeddings: its fusion mode starts from the text tower's states and never uses them"),
    ("doc_fusion_model", r"attention_pooling\.bert\.encoder\.layer\.[0-5]\..+",
     "their fusion BERT's layers 0-5: its fusion mode starts at layer 6 and never runs them"),
    ("doc_fusion_model", r"attention_pooling\.cls\..+", "their fusion BERT's masked-LM head, not part of the features"),
    ("text_generation_model", r"gpt2_model\..*\.attn\.(masked_)?bias", "GPT-2 causal-mask buffers, rebuilt by transformers"),
]

# tensors of this model that their checkpoint cannot provide, and why (recorded in the output as
# NO_COUNTERPART: the evaluator accepts exactly these as missing)
NO_COUNTERPART_HERE = [
    (r"contrastive\.logit_scale", "their temperature lives in their loss modules, which their checkpoint does not "
                                  "hold; the retrieval features do not use it"),
    (r"vision_recon\..+", "their model has no vision reconstruction (L_re,v); the retrieval features do not use it"),
    (r"text_recon\..+", "their checkpoint holds no text generation model; the retrieval features do not use it"),
]
# text_recon.* when their file has a text generation model whose tensors do not fit this one
RECON_MISFIT = ("their text generation model does not fit this one (the shape mismatches above); the retrieval "
                "features do not use it")

# what --write-config sets on top of --config, by variant (num_frames and layer counts come from the tensors)
AUTHORS_SETTINGS = {
    "data": {"preprocess": "authors", "test_frames": "authors", "test_text": "authors_lines", "text_max_len": 90},
    "model": {"backbone": {"text_attention_mask": False}, "video": {"pooling": "mit"}},
}
FUSION_SETTINGS = {
    ATTENTION: {"type": "attention"},
    BERTX: {"type": "fusion", "text_input": "final", "proj_bias": True},
}

# parts whose tensors map but which compute something else here
DIFFERENCES = {
    BERTX: "their BertXFusionModel drops the [CLS] state and L2-normalises the text states over the sequence "
           "axis before its fusion layers, and reads the patch tokens of their own ViT variant; here the fusion "
           "reads the final states as they are and every token after ln_post, so u_cls differs",
}

NOT_WEIGHTS = re.compile(r".*optimizer$|^epoch$|^global_step$|^arch$|^args$|^best\w*$")


def detect_variant(checkpoint):
    """ATTENTION or BERTX from the keys of their `doc_fusion_model`; ValueError when neither is there."""
    keys = strip_module_prefix(checkpoint.get("doc_fusion_model") or {})
    if any(k.startswith("attention_pooling.bert.") for k in keys):
        return BERTX
    if "attention_pooling.projection.weight" in keys:
        return ATTENTION
    raise ValueError("doc_fusion_model has neither attention_pooling.projection (DocAttentionFusionModel) nor "
                     "attention_pooling.bert.* (BertXFusionModel)")


def authors_settings(checkpoint, variant):
    """The config keys that build their computation, with frame count and layer counts read off the tensors."""
    fusion = strip_module_prefix(checkpoint["doc_fusion_model"])
    pos = fusion.get("video_attention_pooling.positional_embedding")
    if pos is None or pos.dim() != 3:
        raise ValueError("doc_fusion_model: expected video_attention_pooling.positional_embedding of shape [1, T, D]")
    blocks = {int(m.group(1)) for k in fusion if (m := re.match(MIT + r"resblocks\.(\d+)\.", k))}
    settings = {"data": dict(AUTHORS_SETTINGS["data"], num_frames=pos.shape[1]),
                "model": {"backbone": dict(AUTHORS_SETTINGS["model"]["backbone"]),
                          "video": dict(AUTHORS_SETTINGS["model"]["video"], mit_layers=len(blocks)),
                          "fusion": dict(FUSION_SETTINGS[variant])}}
    if variant == BERTX:
        layers = {int(m.group(1)) for k in fusion
                  if (m := re.match(r"attention_pooling\.bert\.encoder\.layer\.(\d+)\.crossattention\.", k))}
        settings["model"]["fusion"]["num_layers"] = len(layers)
    return settings


def settings_overrides(settings):
    """The settings as key.sub=value overrides (yaml values)."""
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in flatten(settings)]


def model_shapes(config, overrides=()):
    """{key: shape} of the model a config builds, without allocating its weights."""
    from models import build_model

    cfg = load_config(config, list(overrides))
    cfg["model"]["backbone"]["pretrained"] = None  # only the shapes are needed
    with torch.device("meta"):
        model = build_model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _reshape(ours, tensor, shape):
    """Their tensor in our layout, or None. Their GPT-2 has 32 positions where queries here have at most
    data.query_max_len: the first ones are kept."""
    if tuple(tensor.shape) == shape:
        return tensor
    if ours.endswith("transformer.wpe.weight") and tensor.shape[1:] == shape[1:] and tensor.shape[0] >= shape[0]:
        return tensor[:shape[0]]
    return None


def _target(rule, key):
    pattern, target = rule
    m = re.fullmatch(pattern, key)
    return target(m) if callable(target) else m.expand(target)


def convert(checkpoint, shapes, variant):
    """checkpoint: their torch.load()ed dict; shapes: {our key: shape}; variant: ATTENTION or BERTX.
    -> (state, no_counterpart {our key: reason}, report)."""
    rules = COMMON_RULES + VARIANT_RULES[variant]
    state, report = {}, {"mapped": [], "not_converted": defaultdict(list), "shape_mismatch": [], "unknown": [],
                         "not_weights": [], "reshaped": [], "differs": DIFFERENCES.get(variant)}
    for entry, value in checkpoint.items():
        if NOT_WEIGHTS.match(entry):
            report["not_weights"].append(entry)
            continue
        if not isinstance(value, dict):
            report["unknown"].append(entry)
            continue
        for key, tensor in strip_module_prefix(value).items():
            where = f"{entry}:{key}"
            rule = next(((p, t) for e, p, t in rules if e == entry and re.fullmatch(p, key)), None)
            if rule is None:
                reason = next((why for e, p, why in NOT_CONVERTED if e == entry and re.fullmatch(p, key)), None)
                if reason is None:
                    report["unknown"].append(where)
                else:
                    report["not_converted"][reason].append(where)
                continue
            ours = _target(rule, key)
            if ours not in shapes:
                report["unknown"].append(f"{where} -> {ours} (not in this model)")
                continue
            converted = _reshape(ours, tensor, shapes[ours])
            if converted is None:
                report["shape_mismatch"].append(f"{where} {tuple(tensor.shape)} -> {ours} {shapes[ours]}")
                continue
            if converted.shape != tensor.shape:
                report["reshaped"].append(f"{ours}: {tuple(tensor.shape)} -> {tuple(converted.shape)}")
            state[ours] = converted.clone()
            report["mapped"].append(ours)
    no_counterpart, undeclared = {}, []
    for key in sorted(k for k in shapes if k not in state):
        reason = next((why for p, why in NO_COUNTERPART_HERE if re.fullmatch(p, key)), None)
        if key.startswith("text_recon.") and "text_generation_model" in checkpoint:
            reason = RECON_MISFIT
        if reason is None:
            undeclared.append(key)
        else:
            no_counterpart[key] = reason
    report["undeclared"] = undeclared
    return state, no_counterpart, report


def _group(keys):
    groups = defaultdict(int)
    for k in keys:
        groups[".".join(k.split(".")[:3])] += 1
    return ", ".join(f"{g} ({n})" for g, n in sorted(groups.items()))


def format_report(variant, report, no_counterpart, total):
    lines = [f"fusion variant: {variant}",
             f"mapped {len(report['mapped'])} tensors onto {total} of this model ({_group(report['mapped'])})"]
    lines += [f"  reshaped: {r}" for r in report["reshaped"]]
    for why, keys in report["not_converted"].items():
        lines.append(f"not converted, {len(keys)} tensors: {why} (e.g. {keys[0]})")
    for key in report["shape_mismatch"]:
        lines.append(f"shape mismatch, not converted: {key}")
    for key in report["unknown"]:
        lines.append(f"unknown, not converted: {key}")
    if report["not_weights"]:
        lines.append(f"skipped (not model weights): {', '.join(report['not_weights'])}")
    by_reason = defaultdict(list)
    for key, why in no_counterpart.items():
        by_reason[why].append(key)
    for why, keys in by_reason.items():
        lines.append(f"no counterpart in their checkpoint, {len(keys)} tensors ({_group(keys)}): {why}")
    if report["undeclared"]:
        lines.append(f"no counterpart and no reason, {len(report['undeclared'])} tensors: {_group(report['undeclared'])}")
    if report["differs"]:
        lines.append(f"mapped but computed differently: {report['differs']}")
    return "\n".join(lines)


def write_config(path, base, settings):
    text = (f"# The authors' computation for their checkpoint, on top of {os.path.basename(base)}; written by "
            "scripts/convert_authors_checkpoint.py\n"
            + yaml.safe_dump({"_base_": os.path.abspath(base), **settings}, sort_keys=False, allow_unicode=True))
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="the authors' checkpoint.pth.tar or pretrain.pth.tar")
    p.add_argument("output", help="converted checkpoint, for eval.checkpoint (or init_from)")
    p.add_argument("--config", default=os.path.join(REPO, "configs", "qcd_real400k.yaml"),
                   help="config the written one builds on (default: Ours-Q on Real400K)")
    p.add_argument("--write-config", required=True, metavar="OUT_CFG",
                   help="YAML written with the settings of their computation (`_base_`: --config)")
    args = p.parse_args(argv)
    for out in (args.output, args.write_config):
        if os.path.exists(out):
            print(f"error: {out} exists; not overwriting it", file=sys.stderr)
            return 2
    try:
        checkpoint = torch.load(args.input, map_location="cpu", weights_only=True)
    except Exception as e:
        print(f"error: {args.input}: not a readable PyTorch checkpoint: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if not isinstance(checkpoint, dict):
        print(f"error: {args.input}: expected a dict of state dicts, got {type(checkpoint).__name__}", file=sys.stderr)
        return 2
    try:
        variant = detect_variant(checkpoint)
        settings = authors_settings(checkpoint, variant)
    except ValueError as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        return 2
    shapes = model_shapes(args.config, settings_overrides(settings))
    state, no_counterpart, report = convert(checkpoint, shapes, variant)
    print(format_report(variant, report, no_counterpart, len(shapes)))
    if not state:
        print(f"error: no tensor of {args.input} has a counterpart in the model of {args.config}", file=sys.stderr)
        return 1
    tmp = args.output + ".tmp"
    torch.save({"model": state, NO_COUNTERPART: no_counterpart, "converted_from": os.path.abspath(args.input)}, tmp)
    os.replace(tmp, args.output)
    write_config(args.write_config, args.config, settings)
    note = "" if not report["undeclared"] else (" (the tensors without a reason keep their initialisation: "
                                                "init_from loads this file, the evaluator refuses it)")
    print(f"wrote {args.output} and {args.write_config}: sh video2goods_evaluate.sh {args.output} "
          f"{args.write_config}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
