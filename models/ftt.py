"""Frame-level Temporal Transformer (paper Eq. 4): v_cls = Avg(FTT(h + e_temp))."""
import torch
from torch import nn

# std of the residual branches' output projections at init: their output, whatever the input's
# scale (the layers are pre-norm), is then ~1e-3 of a unit vector at width 512
BRANCH_INIT_STD = 1e-5


class FrameTemporalTransformer(nn.Module):
    """Per-frame [CLS] features h [B,T,D] plus a learnable absolute temporal position embedding,
    standard pre-norm transformer layers (MHSA + FFN), then the average over frames.

    It starts as (nearly) the frame mean, so that fine-tuning begins from the pretrained frame
    features rather than from a random mix of them: the temporal embedding starts at zero and
    every residual branch's output projection near zero, so each layer passes its input through.
    The authors' temporal module gets the same start by adding its input back around small
    layers. Gradients reach every parameter from the first step (the branches are small, not
    zero); the frame order is learnt as the temporal embedding moves away from zero."""

    def __init__(self, dim, num_layers, num_heads, max_frames):
        super().__init__()
        self.temporal_embedding = nn.Parameter(torch.zeros(max_frames, dim))
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=4 * dim, dropout=0.1,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        for block in self.encoder.layers:
            for out_proj in (block.self_attn.out_proj, block.linear2):
                nn.init.normal_(out_proj.weight, std=BRANCH_INIT_STD)
                nn.init.zeros_(out_proj.bias)

    def forward(self, h):
        t = h.shape[1]
        if t > self.temporal_embedding.shape[0]:
            raise ValueError(f"FTT got {t} frames but was built for at most {self.temporal_embedding.shape[0]} (data.num_frames)")
        return self.encoder(h + self.temporal_embedding[:t]).mean(dim=1)
