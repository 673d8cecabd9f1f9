"""Chinese-CLIP backbone (cn_clip's `CLIP`): one ViT for goods images and video frames, one
RoBERTa text tower for queries and item text, with weights from a local cn_clip checkpoint.

The towers are run layer by layer here (instead of `CLIP.encode_image/encode_text`) so that
the patch tokens and an intermediate text state are available, and so that gradient
checkpointing is non-reentrant (cn_clip's own switch uses the reentrant default, which
fails under DDP). The arithmetic is cn_clip's, so the projected [CLS] features equal
`encode_image` / `encode_text` of the same weights.
"""
import json
import os

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import cn_clip.clip
from cn_clip.clip.model import CLIP, resize_pos_embed

from models.weights import WEIGHTS_HELP
from utils.checkpoint import WeightsMismatch, read_torch_file, state_dict_of

CN_CLIP_CONFIG_DIR = os.path.join(os.path.dirname(cn_clip.clip.__file__), "model_configs")
CHECKPOINT_HELP = WEIGHTS_HELP["chinese_clip"]


def _read_cn_clip_config(name):
    path = os.path.join(CN_CLIP_CONFIG_DIR, f"{name}.json")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(CN_CLIP_CONFIG_DIR) if f.endswith(".json"))
        raise ValueError(f"model.backbone: no cn_clip model config named '{name}' ({path}); known: {', '.join(known)}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def clip_arguments(vision_model, text_model, image_size, embed_dim, overrides=None):
    """CLIP(...) constructor arguments: the named cn_clip configs, the image size and joint width, then overrides
    (model.backbone.vision_model, text_model, data.image_size, model.embed_dim, model.backbone.overrides)."""
    args = {}
    args.update(_read_cn_clip_config(vision_model))
    args.update(_read_cn_clip_config(text_model))
    args["image_resolution"] = image_size
    args["embed_dim"] = embed_dim
    args.update(overrides or {})
    if args["image_resolution"] != image_size:
        raise ValueError(
            f"model.backbone.overrides.image_resolution={args['image_resolution']} differs from "
            f"data.image_size={image_size}; the model must see the resolution the data pipeline produces")
    if args["embed_dim"] != embed_dim:
        raise ValueError("set the joint embedding width with model.embed_dim, not model.backbone.overrides.embed_dim")
    if isinstance(args["vision_layers"], (list, tuple)):
        raise ValueError("model.backbone: only ViT vision towers are supported (patch tokens feed the fusion encoder)")
    return args


def read_checkpoint_state_dict(path):
    """The state dict of a cn_clip checkpoint: {"state_dict": ...} with or without `module.`, or a bare one."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.backbone.pretrained: checkpoint file not found: {path}; {CHECKPOINT_HELP}")
    ckpt = read_torch_file(path, "a cn_clip release checkpoint such as clip_cn_vit-b-16.pt",
                           "model.backbone.pretrained")
    state = state_dict_of(ckpt, ("state_dict",))
    if state is None:
        raise ValueError(f"{path}: expected a cn_clip checkpoint ({{'state_dict': {{name: tensor}}}} or a bare state dict)")
    return state


class CNClipBackbone(nn.Module):
    """Wraps cn_clip's CLIP; `clip` keeps cn_clip's parameter names so its checkpoints load as they are.
    It is the chinese_clip family of models.families and follows the backbone protocol described there."""

    visual_prefixes = ("clip.visual.",)

    def __init__(self, spec):
        """spec: a models.families.BackboneSpec of the chinese_clip family."""
        super().__init__()
        self.clip = CLIP(**clip_arguments(spec.vision_model, spec.text_model, spec.image_size, spec.embed_dim,
                                          spec.overrides))
        # The contrastive loss owns the (learnable) temperature; CLIP's own one stays unused.
        self.clip.logit_scale.requires_grad_(False)
        if spec.pretrained:
            self.load_pretrained(spec.pretrained)
        self.grad_checkpointing = bool(spec.grad_checkpointing)
        if "visual" in spec.freeze:
            self.clip.visual.requires_grad_(False)
        if "text" in spec.freeze:
            self.clip.bert.requires_grad_(False)
            self.clip.text_projection.requires_grad_(False)

    @property
    def vision_width(self):
        return self.clip.visual.conv1.out_channels

    @property
    def num_patches(self):
        return self.clip.visual.grid_size[0] * self.clip.visual.grid_size[1]

    @property
    def text_width(self):
        return self.clip.bert_config.hidden_size

    @property
    def vocab_size(self):
        return self.clip.bert_config.vocab_size

    @property
    def context_length(self):
        return self.clip.bert_config.max_position_embeddings

    @property
    def embed_dim(self):
        return self.clip.text_projection.shape[1]

    @property
    def image_size(self):
        return self.clip.visual.input_resolution

    @property
    def text_layers(self):
        return self.clip.bert.encoder.layer

    def load_pretrained(self, path):
        state = read_checkpoint_state_dict(path)
        resize_pos_embed(state, self.clip)
        expected = self.clip.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
        if missing or unexpected or wrong_shape:
            lines = [f"{path}: checkpoint does not fit the configured backbone "
                     f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong_shape)} of another shape)"]
            lines += [f"  missing: {k}" for k in missing]
            lines += [f"  unexpected: {k}" for k in unexpected]
            lines += [f"  shape: {k} checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong_shape]
            raise WeightsMismatch("\n".join(lines))
        self.clip.load_state_dict({k: v.float() for k, v in state.items()})

    def _run(self, block, *args):
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def encode_frames(self, images):
        """images [N,3,H,W] -> (projected [CLS] [N, embed_dim], all tokens after ln_post [N, 1+P, width])."""
        vit = self.clip.visual
        x = vit.conv1(images.to(vit.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = vit.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + vit.positional_embedding.to(x.dtype)
        x = vit.ln_pre(x).transpose(0, 1)  # cn_clip's blocks are sequence-first
        for block in vit.transformer.resblocks:
            x = self._run(block, x)
        tokens = vit.ln_post(x.transpose(0, 1))
        return tokens[:, 0] @ vit.proj, tokens

    def encode_text(self, input_ids, attention_mask, keep_layer=None):
        """-> (projected [CLS] [B, embed_dim], last hidden states [B,L,H], hidden state entering layer `keep_layer`)."""
        bert = self.clip.bert
        x = bert.embeddings(input_ids)
        additive_mask = extended_attention_mask(attention_mask, x.dtype)
        kept = None
        for i, layer in enumerate(bert.encoder.layer):
            if i == keep_layer:
                kept = x
            x = self._run(layer, x, additive_mask)
        return x[:, 0] @ self.clip.text_projection, x, kept


def extended_attention_mask(attention_mask, dtype):
    """[B,L] 1/0 -> additive [B,1,1,L] mask, as cn_clip's BertModel builds it."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * -10000.0
