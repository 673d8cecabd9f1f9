"""Video-level feature from per-frame features h [B,T,D] (Tables 3 and 6), chosen by model.video.pooling."""
from torch import nn

from models.ftt import FrameTemporalTransformer


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


def build_video_pooling(cfg):
    vcfg = cfg["model"]["video"]
    dim = cfg["model"]["embed_dim"]
    kind = vcfg["pooling"]
    if kind == "add":
        return SumPooling()
    if kind == "mean":
        return MeanPooling()
    if kind == "lstm":
        return LSTMPooling(dim)
    if kind == "ftt":
        return FrameTemporalTransformer(dim, vcfg["ftt_layers"], vcfg["ftt_heads"], cfg["data"]["num_frames"])
    raise ValueError(f"model.video.pooling: unknown value '{kind}'; expected add, mean, lstm or ftt")
