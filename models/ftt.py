"""Frame-level Temporal Transformer (paper Eq. 4): v_cls = Avg(FTT(h + e_temp))."""
import torch
from torch import nn


class FrameTemporalTransformer(nn.Module):
    """Per-frame [CLS] features h [B,T,D] plus a learnable absolute temporal position embedding,
    standard transformer layers (MHSA + FFN), then the average over frames."""

    def __init__(self, dim, num_layers, num_heads, max_frames):
        super().__init__()
        self.temporal_embedding = nn.Parameter(torch.zeros(max_frames, dim))
        nn.init.normal_(self.temporal_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=4 * dim, dropout=0.1,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, h):
        t = h.shape[1]
        if t > self.temporal_embedding.shape[0]:
            raise ValueError(f"FTT got {t} frames but was built for at most {self.temporal_embedding.shape[0]} (data.num_frames)")
        return self.encoder(h + self.temporal_embedding[:t]).mean(dim=1)
