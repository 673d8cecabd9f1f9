"""Video-level feature from per-frame features h [B,T,D] (Tables 3 and 6), chosen by model.video.pooling
among POOLINGS."""
from dataclasses import dataclass

import torch
from torch import nn

from models.ftt import FrameTemporalTransformer

# MIT's attention heads are its width over this (X-CLIP: 512 -> 8)
MIT_HEAD_WIDTH = 64


class SumPooling(nn.Module):
    """'add': the frame features added up, no temporal model (the paper's "Add" row, which it does
    not define further). It is T x 'mean': every loss and retrieval feature L2-normalises v_cls, so
    the two are equivalent except where v_cls enters unnormalised, as the keys/values of the text
    reconstruction's cross-attention."""

    def forward(self, h):
        return h.sum(dim=1)


class MeanPooling(nn.Module):
    def forward(self, h):
        return h.mean(dim=1)


class LSTMPooling(nn.Module):
    """A one-layer LSTM over the frames with a residual connection, then the mean (CLIP4Clip's seqLSTM)."""

    def __init__(self, dim):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, batch_first=True)

    def forward(self, h):
        out, _ = self.lstm(h)
        return (out + h).mean(dim=1)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the GELU approximation of OpenAI's CLIP."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class MITBlock(nn.Module):
    """Pre-LN transformer block with a QuickGELU MLP; sequence-first input [T, B, D]."""

    def __init__(self, dim):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, max(1, dim // MIT_HEAD_WIDTH))
        self.ln_1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), QuickGELU(), nn.Linear(4 * dim, dim))
        self.ln_2 = nn.LayerNorm(dim)

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class MITPooling(nn.Module):
    """'mit': X-CLIP's multi-frame integration transformer as the authors' code uses it: a [1, T, D]
    positional embedding, pre-LN blocks, the input added back after the blocks, the mean over T.
    A 1-frame clip (goods) is broadcast against the T positions, as their code does, so a goods
    feature also passes through the blocks T times with T position embeddings."""

    def __init__(self, dim, num_layers, num_frames):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(1, num_frames, dim))
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)
        self.blocks = nn.Sequential(*[MITBlock(dim) for _ in range(num_layers)])

    def forward(self, h):
        t = self.positional_embedding.shape[1]
        if h.shape[1] not in (1, t):
            raise ValueError(f"mit pooling was built for {t} frames (data.num_frames) or 1 (goods), got {h.shape[1]}")
        x = self.blocks((h + self.positional_embedding).transpose(0, 1)).transpose(0, 1)
        return (x + h).mean(dim=1)


@dataclass(frozen=True)
class PoolingSpec:
    """model.video: the pooling (a name of POOLINGS) and the sizes of the learnt ones."""
    kind: str
    ftt_layers: int
    ftt_heads: int
    mit_layers: int


# name -> builder(spec, dim, num_frames)
POOLINGS = {
    "add": lambda spec, dim, num_frames: SumPooling(),
    "mean": lambda spec, dim, num_frames: MeanPooling(),
    "lstm": lambda spec, dim, num_frames: LSTMPooling(dim),
    "ftt": lambda spec, dim, num_frames: FrameTemporalTransformer(dim, spec.ftt_layers, spec.ftt_heads, num_frames),
    "mit": lambda spec, dim, num_frames: MITPooling(dim, spec.mit_layers, num_frames),
}


def build_video_pooling(spec, dim, num_frames):
    """The pooling of spec.kind over features of width `dim`, for clips of `num_frames` frames (data.num_frames)."""
    return POOLINGS[spec.kind](spec, dim, num_frames)
