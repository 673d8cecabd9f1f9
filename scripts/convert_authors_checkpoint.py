"""Convert a checkpoint of the authors' code (PKU-ICST-MIPL/Real20M_ACMMM2023: `checkpoint.pth.tar`,
`pretrain.pth.tar`) into one that `init_from` loads, and report what has no counterpart here.

    python scripts/convert_authors_checkpoint.py IN OUT [--config configs/qcd_real400k.yaml]

Their file is a dict of DDP state dicts, one per module of their training script:
`state_dict` (the cn_clip visual tower), `doc_text_model` (a whole cn_clip model whose RoBERTa
and text projection are trained), `doc_fusion_model` (X-CLIP's multi-frame integration
transformer and an attention pooling of the text and video features) and
`text_generation_model` (a transformers GPT-2 with cross-attention). Tensors are mapped by
the rules below, checked against the shapes of the model that `--config` builds, and written
as {"model": state}. The report lists every tensor that was not mapped, grouped, with the
reason, and the parts whose tensors map but whose computation differs here.
"""
import argparse
import os
import re
import sys
from collections import defaultdict

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from utils.checkpoint import strip_module_prefix  # noqa: E402

# (entry of their checkpoint, key pattern after `module.`, our key)
RULES = [
    ("state_dict", r"visual_model\.(.+)", r"backbone.clip.visual.\1"),
    ("doc_text_model", r"clip_model\.bert\.(.+)", r"backbone.clip.bert.\1"),
    ("doc_text_model", r"text_projection", "backbone.clip.text_projection"),
    ("doc_fusion_model", r"video_attention_pooling\.positional_embedding", "video_pooling.temporal_embedding"),
    ("doc_fusion_model", r"video_attention_pooling\.resblocks\.(\d+)\.attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
     r"video_pooling.encoder.layers.\1.self_attn.\2"),
    ("doc_fusion_model", r"video_attention_pooling\.resblocks\.(\d+)\.ln_1\.(weight|bias)", r"video_pooling.encoder.layers.\1.norm1.\2"),
    ("doc_fusion_model", r"video_attention_pooling\.resblocks\.(\d+)\.ln_2\.(weight|bias)", r"video_pooling.encoder.layers.\1.norm2.\2"),
    ("doc_fusion_model", r"video_attention_pooling\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"video_pooling.encoder.layers.\1.linear1.\2"),
    ("doc_fusion_model", r"video_attention_pooling\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"video_pooling.encoder.layers.\1.linear2.\2"),
    ("text_generation_model", r"gpt2_model\.(.+)", r"text_recon.decoder.\1"),
]

# tensors not converted, and why (aliases of converted ones, or no counterpart here)
NOT_CONVERTED = [
    ("doc_text_model", r"text_model\..+", "the same tensors as clip_model.bert.* (an alias in their module)"),
    ("doc_text_model", r"clip_model\.text_projection", "the same tensor as text_projection (an alias in their module)"),
    ("doc_text_model", r"clip_model\.visual\..+",
     "the text model's own copy of the visual tower, left at its initial weights; the trained one is `state_dict`"),
    ("doc_text_model", r"clip_model\.logit_scale", "cn_clip's temperature; QCD learns its own (loss.temperature)"),
    ("doc_fusion_model", r"attention_pooling\..+",
     "their fusion is a softmax-weighted sum of the text and video features (AttentionPooling); "
     "the paper's fusion encoder here (model.fusion.type) has no such weights"),
    ("text_generation_model", r"gpt2_model\..*\.attn\.(masked_)?bias", "GPT-2 causal-mask buffers, rebuilt by transformers"),
]

# parts whose tensors map but which compute something else here
DIFFERENCES = {
    "video_pooling.": "their temporal module (X-CLIP's MIT) adds its input once more after the blocks and uses "
                      "QuickGELU; the FTT here uses GELU and the blocks' own residuals only, so v_cls differs",
}

NOT_WEIGHTS = re.compile(r".*optimizer$|^epoch$|^global_step$|^arch$|^args$")


def _model_shapes(config, overrides=()):
    """{key: shape} of the model a config builds, without allocating its weights."""
    from models import build_model
    from utils.config import load_config

    cfg = load_config(config, list(overrides))
    cfg["model"]["backbone"]["pretrained"] = None  # only the shapes are needed
    with torch.device("meta"):
        model = build_model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _reshape(ours, tensor, shape):
    """Their tensor in our layout, or None. Two layouts differ: X-CLIP keeps its temporal embedding as
    [1, T, D], and their GPT-2 has 32 positions where queries here have at most data.query_max_len."""
    if tuple(tensor.shape) == shape:
        return tensor
    if ours == "video_pooling.temporal_embedding" and tensor.dim() == 3 and tuple(tensor.shape[1:]) == shape:
        return tensor[0]
    if ours.endswith("transformer.wpe.weight") and tensor.shape[1:] == shape[1:] and tensor.shape[0] >= shape[0]:
        return tensor[:shape[0]]
    return None


def convert(checkpoint, shapes):
    """checkpoint: their torch.load()ed dict; shapes: {our key: shape}. -> (state, report)."""
    state, report = {}, {"mapped": [], "not_converted": defaultdict(list), "shape_mismatch": [], "unknown": [],
                         "not_weights": [], "reshaped": [], "differs": {}}
    for entry, value in checkpoint.items():
        if NOT_WEIGHTS.match(entry):
            report["not_weights"].append(entry)
            continue
        if not isinstance(value, dict):
            report["unknown"].append(entry)
            continue
        for key, tensor in strip_module_prefix(value).items():
            where = f"{entry}:{key}"
            rule = next(((pattern, target) for e, pattern, target in RULES if e == entry and re.fullmatch(pattern, key)), None)
            if rule is None:
                reason = next((why for e, pattern, why in NOT_CONVERTED if e == entry and re.fullmatch(pattern, key)), None)
                if reason is None:
                    report["unknown"].append(where)
                else:
                    report["not_converted"][reason].append(where)
                continue
            ours = re.sub(rule[0], rule[1], key, count=1)
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
            for prefix, why in DIFFERENCES.items():
                if ours.startswith(prefix):
                    report["differs"][prefix] = why
    report["fresh"] = sorted(k for k in shapes if k not in state)
    return state, report


def _group(keys):
    groups = defaultdict(int)
    for k in keys:
        groups[".".join(k.split(".")[:3])] += 1
    return ", ".join(f"{g} ({n})" for g, n in sorted(groups.items()))


def format_report(report, total):
    lines = [f"mapped {len(report['mapped'])} tensors onto {total} of this model ({_group(report['mapped'])})"]
    lines += [f"  reshaped: {r}" for r in report["reshaped"]]
    for why, keys in report["not_converted"].items():
        lines.append(f"not converted, {len(keys)} tensors: {why} (e.g. {keys[0]})")
    for key in report["shape_mismatch"]:
        lines.append(f"shape mismatch, not converted: {key}")
    for key in report["unknown"]:
        lines.append(f"unknown, not converted: {key}")
    if report["not_weights"]:
        lines.append(f"skipped (not model weights): {', '.join(report['not_weights'])}")
    for prefix, why in report["differs"].items():
        lines.append(f"mapped but computed differently: {prefix}* — {why}")
    lines.append(f"start from their own initialisation here ({len(report['fresh'])} tensors): {_group(report['fresh'])}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="the authors' checkpoint.pth.tar or pretrain.pth.tar")
    p.add_argument("output", help="converted checkpoint, for init_from=OUTPUT")
    p.add_argument("--config", default=os.path.join(REPO, "configs", "qcd_real400k.yaml"),
                   help="config of the model to convert into (default: Ours-Q on Real400K)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = p.parse_args(argv)
    if os.path.exists(args.output):
        print(f"error: {args.output} exists; not overwriting it", file=sys.stderr)
        return 2
    try:
        checkpoint = torch.load(args.input, map_location="cpu", weights_only=True)
    except Exception as e:
        print(f"error: {args.input}: not a readable PyTorch checkpoint: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if not isinstance(checkpoint, dict):
        print(f"error: {args.input}: expected a dict of state dicts, got {type(checkpoint).__name__}", file=sys.stderr)
        return 2
    shapes = _model_shapes(args.config, args.overrides)
    state, report = convert(checkpoint, shapes)
    print(format_report(report, len(shapes)))
    if not state:
        print(f"error: no tensor of {args.input} has a counterpart in the model of {args.config}", file=sys.stderr)
        return 1
    tmp = args.output + ".tmp"
    torch.save({"model": state, "converted_from": os.path.abspath(args.input)}, tmp)
    os.replace(tmp, args.output)
    print(f"wrote {args.output}: use init_from={args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
