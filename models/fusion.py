"""Fusion of an item's text and visual features into u_cls (Table 5), chosen by model.fusion.type among
FUSIONS.

`fusion` (Ours-Q): BERT layers over the product/video text tokens with cross-attention to the
visual tokens, self-attention and FFN copied from the last `num_layers` layers of the text
tower, cross-attention new. The self-attention is bidirectional (cn_clip's own attention
block with a padding mask only), unlike transformers' BertLayer, which turns causal once it
has cross-attention. With model.fusion.text_input=layer6 (as in ALBEF) the fusion layers continue
from the text state that enters the copied layers, so at the start of training they see the
inputs those weights were trained on; `final` feeds them the text tower's last states instead,
as the authors' BertXFusionModel does.

`attention`: the authors' DocAttentionFusionModel (what their training script trains): a
softmax over two weights from the concatenated normalised text and visual features, and the
weighted sum of the two.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.backbone import extended_attention_mask


class CrossAttention(nn.Module):
    """Multi-head attention from the text states to the visual tokens, then residual + LayerNorm (post-LN, as BERT)."""

    def __init__(self, hidden, heads, dropout, init_std, eps=1e-12):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"fusion cross-attention: hidden size {hidden} is not a multiple of {heads} heads")
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        for lin in (self.query, self.key, self.value, self.dense):
            nn.init.normal_(lin.weight, std=init_std)
            nn.init.zeros_(lin.bias)

    def _heads(self, x):
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x, memory):
        q, k, v = self._heads(self.query(x)), self._heads(self.key(memory)), self._heads(self.value(memory))
        p = self.dropout.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).flatten(2)
        return self.LayerNorm(self.dropout(self.dense(out)) + x)


# the blocks of a text-tower layer that FusionLayer copies (its cross-attention is new)
COPIED_LAYER_PARTS = ("attention", "intermediate", "output")


class FusionLayer(nn.Module):
    def __init__(self, text_layer, bert_config):
        super().__init__()
        self.attention = copy.deepcopy(text_layer.attention)
        self.crossattention = CrossAttention(bert_config.hidden_size, bert_config.num_attention_heads,
                                             bert_config.attention_probs_dropout_prob, bert_config.initializer_range,
                                             bert_config.layer_norm_eps)
        self.intermediate = copy.deepcopy(text_layer.intermediate)
        self.output = copy.deepcopy(text_layer.output)

    def forward(self, x, additive_mask, visual):
        x = self.attention(x, additive_mask)[0]
        x = self.crossattention(x, visual)
        return self.output(self.intermediate(x), x)


# model.fusion.text_input: the text states the fusion encoder reads, those entering its copied layers (layer6) or
# the text tower's final ones
TEXT_INPUTS = ("layer6", "final")


class FusionEncoder(nn.Module):
    uses_tokens = True

    def __init__(self, backbone, num_layers, text_input, proj_bias=False, grad_checkpointing=False):
        """backbone: the chinese_clip towers (models.backbone.CNClipBackbone), whose last `num_layers` text layers
        are copied; u_cls has the backbone's embed_dim."""
        super().__init__()
        text_layers = backbone.text_layers
        if not 1 <= num_layers <= len(text_layers):
            raise ValueError(f"model.fusion.num_layers={num_layers}: the text tower has {len(text_layers)} layers "
                             "to copy from")
        self.start_layer = len(text_layers) - num_layers
        # the text tower's layer whose input the fusion reads; None: its final states
        self.text_layer = self.start_layer if text_input == "layer6" else None
        bert_config = backbone.clip.bert_config
        self.layers = nn.ModuleList(FusionLayer(layer, bert_config) for layer in text_layers[self.start_layer:])
        self.layers.requires_grad_(True)  # trained even when the text tower it was copied from is frozen
        width, hidden = backbone.vision_width, backbone.text_width
        self.visual_norm = nn.LayerNorm(width)
        self.visual_proj = nn.Linear(width, hidden) if width != hidden else nn.Identity()
        # u_cls starts as the text tower's projection of the first token.
        self.proj = nn.Linear(hidden, backbone.embed_dim, bias=proj_bias)
        with torch.no_grad():
            self.proj.weight.copy_(backbone.clip.text_projection.t())
            if self.proj.bias is not None:
                self.proj.bias.zero_()
        self.grad_checkpointing = bool(grad_checkpointing)

    def encode_tokens(self, text_states, text_mask, visual_tokens):
        """-> the fused token states [B, L, hidden]. visual_tokens [B,T,1+P,width] (every ViT output token,
        [CLS] and patches): averaged over the frames, normalised, projected to the text width, then the
        keys/values of every cross-attention."""
        visual = self.visual_proj(self.visual_norm(visual_tokens.mean(dim=1)))
        additive_mask = extended_attention_mask(text_mask, text_states.dtype)
        x = text_states
        for layer in self.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, additive_mask, visual, use_reentrant=False)
            else:
                x = layer(x, additive_mask, visual)
        return x

    def forward(self, v_cls, t_cls, text_states, text_mask, visual_tokens):
        """-> u_cls [B, embed_dim], the projected first fused token."""
        return self.proj(self.encode_tokens(text_states, text_mask, visual_tokens)[:, 0])


class AttentionFusion(nn.Module):
    """'attention': softmax(W [t; v] + b) weighs the normalised text and visual features."""
    uses_tokens = False

    def __init__(self, dim):
        super().__init__()
        self.projection = nn.Linear(2 * dim, 2)

    def forward(self, v_cls, t_cls, text_states=None, text_mask=None, visual_tokens=None):
        features = torch.stack([F.normalize(t_cls, dim=-1), F.normalize(v_cls, dim=-1)], dim=1)
        weights = self.projection(features.flatten(1)).softmax(dim=-1)
        return (features * weights.unsqueeze(-1)).sum(dim=1)


class AddFusion(nn.Module):
    """'add': the sum of the normalised visual and text features."""
    uses_tokens = False

    def forward(self, v_cls, t_cls, text_states=None, text_mask=None, visual_tokens=None):
        return F.normalize(v_cls, dim=-1) + F.normalize(t_cls, dim=-1)


class Combiner(nn.Module):
    """'combiner' (Baldrati et al., CVPR 2022): projected features are concatenated, mixed by an MLP,
    and added to a learned convex combination of the two inputs."""
    uses_tokens = False

    def __init__(self, dim, dropout=0.5):
        super().__init__()
        proj, hidden = 4 * dim, 8 * dim
        self.text_proj = nn.Sequential(nn.Linear(dim, proj), nn.ReLU(), nn.Dropout(dropout))
        self.image_proj = nn.Sequential(nn.Linear(dim, proj), nn.ReLU(), nn.Dropout(dropout))
        self.mix = nn.Sequential(nn.Linear(2 * proj, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.gate = nn.Sequential(nn.Linear(2 * proj, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1), nn.Sigmoid())

    def forward(self, v_cls, t_cls, text_states=None, text_mask=None, visual_tokens=None):
        v, t = F.normalize(v_cls, dim=-1), F.normalize(t_cls, dim=-1)
        joint = torch.cat([self.text_proj(t), self.image_proj(v)], dim=-1)
        lam = self.gate(joint)
        return self.mix(joint) + lam * t + (1 - lam) * v


@dataclass(frozen=True)
class FusionSpec:
    """model.fusion: the fusion (a name of FUSIONS) and the settings of the fusion encoder."""
    kind: str
    num_layers: int
    text_input: str
    proj_bias: bool


# name -> builder(spec, backbone, dim, grad_checkpointing)
FUSIONS = {
    "add": lambda spec, backbone, dim, grad_checkpointing: AddFusion(),
    "attention": lambda spec, backbone, dim, grad_checkpointing: AttentionFusion(dim),
    "combiner": lambda spec, backbone, dim, grad_checkpointing: Combiner(dim),
    "fusion": lambda spec, backbone, dim, grad_checkpointing: FusionEncoder(
        backbone, spec.num_layers, spec.text_input, spec.proj_bias, grad_checkpointing),
}


def build_fusion(spec, backbone, dim, grad_checkpointing=False):
    """The fusion of spec.kind over `backbone`'s features, projected ones of width `dim`."""
    return FUSIONS[spec.kind](spec, backbone, dim, grad_checkpointing)
