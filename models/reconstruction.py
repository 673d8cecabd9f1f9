"""Reconstruction heads of Eq. 7 (L_recon = L_re,q + L_re,v), used only at training time.

Text: a GPT-2 decoder (transformers) over the query tokens, causal with teacher forcing, whose
cross-attention takes v_cls as its only key/value, then an LM head over the vocabulary.

Vision: the item's visual tokens (frame-averaged patch tokens, detached) with a share
`vision_mask_ratio` replaced by a learned mask token, self-attention among them and
cross-attention to u_cls as the only key/value (transformer decoder layers), LN, MLP ->
the original tokens. Masking is the corruption: the masked tokens are not recoverable from
the visible ones alone, so the loss can only be lowered by information carried in u_cls
(with ratio 1.0 nothing but u_cls and the positions is visible).

Both cross-attentions have a single key (v_cls or u_cls), so their softmax is identically 1 and
the query side (the query projection and the LayerNorm in front of it) cannot change the
output. Those parameters would never get a gradient (and DDP would reject them as unused), so
they are frozen.
"""
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel


@dataclass(frozen=True)
class ReconSpec:
    """model.recon: the sizes of both heads and the share of visual tokens masked, in (0, 1]."""
    text_layers: int
    text_heads: int
    vision_layers: int
    vision_heads: int
    vision_mask_ratio: float


class TextReconstructor(nn.Module):
    def __init__(self, spec, vocab_size, dim, max_len, token_ids, grad_checkpointing=False):
        """spec: a ReconSpec; a decoder of width `dim` over queries of up to `max_len` tokens (data.query_max_len)
        of a vocabulary of `vocab_size`; token_ids: the tokenizer's (start, end, pad) ids, recorded in the
        decoder's config."""
        super().__init__()
        start_id, end_id, pad_id = token_ids
        config = GPT2Config(vocab_size=vocab_size, n_positions=max_len, n_embd=dim,
                            n_layer=spec.text_layers, n_head=spec.text_heads, add_cross_attention=True,
                            bos_token_id=start_id, eos_token_id=end_id, pad_token_id=pad_id)
        self.decoder = GPT2LMHeadModel(config)
        for block in self.decoder.transformer.h:
            block.crossattention.q_attn.requires_grad_(False)
            block.ln_cross_attn.requires_grad_(False)
        if grad_checkpointing:
            self.decoder.activation_checkpointing_enable({"use_reentrant": False})

    def forward(self, query_ids, query_mask, v_cls):
        """-> logits [B, Lq, vocab]; position i predicts token i+1 from tokens <= i and v_cls."""
        out = self.decoder(input_ids=query_ids, attention_mask=query_mask, encoder_hidden_states=v_cls[:, None, :],
                           use_cache=False)
        return out.logits


class VisionReconstructor(nn.Module):
    def __init__(self, spec, width, num_patches, dim):
        """spec: a ReconSpec; tokens of `width` from `num_patches` patches, conditioned on a u_cls of width `dim`."""
        super().__init__()
        self.mask_ratio = spec.vision_mask_ratio
        self.num_masked = max(1, round(num_patches * self.mask_ratio))
        self.in_proj = nn.Linear(width, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.position = nn.Parameter(torch.zeros(num_patches, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerDecoderLayer(dim, spec.vision_heads, dim_feedforward=4 * dim, dropout=0.1,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, spec.vision_layers)
        for block in self.decoder.layers:
            block.norm2.requires_grad_(False)  # the LayerNorm in front of the single-key cross-attention
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, width))

    def random_mask(self, batch, num_patches, device):
        """[B, P] bool, True where the token is replaced; exactly `num_masked` per item."""
        order = torch.rand(batch, num_patches, device=device).argsort(dim=1)
        return order < self.num_masked

    def forward(self, tokens, u_cls, mask=None):
        """tokens [B,P,width] (targets, detached by the caller), u_cls [B,D] -> (prediction [B,P,width], mask [B,P])."""
        b, p, _ = tokens.shape
        if mask is None:
            mask = self.random_mask(b, p, tokens.device)
        x = self.in_proj(tokens)
        x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x) + self.position
        x = self.decoder(x, memory=u_cls[:, None, :])
        return self.head(self.norm(x)), mask
