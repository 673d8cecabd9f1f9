"""The FTT starts as the mean of the frame features and learns from there (Eq. 4)."""
import os

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.ftt import FrameTemporalTransformer
from tests.helpers import REPO_ROOT
from utils.config import load_config

DEMO = os.path.join(REPO_ROOT, "configs", "demo.yaml")


def different_frames(batch, frames, dim, norm, seed=0):
    """Frame features of the given norm, every frame of a clip a different direction."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, frames, dim, generator=g), dim=-1) * norm


@pytest.mark.parametrize("dim,layers,heads", [(512, 2, 8), (64, 1, 2)])
@pytest.mark.parametrize("norm", [0.5, 1.0, 10.0, 20.0])
def test_ftt_starts_as_the_frame_mean(dim, layers, heads, norm):
    torch.manual_seed(0)
    ftt = FrameTemporalTransformer(dim, layers, heads, max_frames=5).eval()
    h = different_frames(32, 5, dim, norm)
    with torch.no_grad():
        out = ftt(h)
    assert F.cosine_similarity(out, h.mean(1)).min() >= 0.99


def test_demo_model_visual_feature_with_ftt_matches_mean_pooling():
    cfg = load_config(DEMO, ["model.video.pooling=ftt"])
    torch.manual_seed(0)
    ftt_model = build_model(cfg).eval()
    mean_model = build_model(load_config(DEMO, ["model.video.pooling=mean"])).eval()
    weights = {k: v for k, v in ftt_model.state_dict().items() if not k.startswith("video_pooling.")}
    assert not mean_model.load_state_dict(weights, strict=False).missing_keys
    d = cfg["data"]
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(4, d["num_frames"], 3, d["image_size"], d["image_size"], generator=g)
    text = torch.randint(672, 8000, (4, d["text_max_len"]), generator=g)
    mask = torch.ones_like(text)
    with torch.no_grad():
        v_ftt = ftt_model.encode_item(frames, text, mask)["visual"]
        v_mean = mean_model.encode_item(frames, text, mask)["visual"]
        per_frame = ftt_model.backbone.encode_frames(frames.flatten(0, 1))[0].view(4, d["num_frames"], -1)
    assert (F.cosine_similarity(per_frame[:, 0], per_frame[:, 1]) < 0.999).all()  # the frames differ
    assert F.cosine_similarity(v_ftt, v_mean).min() >= 0.99


def test_ftt_gets_gradients_everywhere_and_learns_the_frame_order():
    torch.manual_seed(0)
    ftt = FrameTemporalTransformer(32, 1, 2, max_frames=4)
    ftt.eval()  # no dropout: the comparison below is between deterministic outputs
    h = different_frames(8, 4, 32, 5.0)
    target = different_frames(8, 1, 32, 5.0, seed=1)[:, 0]
    loss = (ftt(h) - target).pow(2).sum() + (ftt(h.flip(1)) + target).pow(2).sum()
    loss.backward()
    dead = [n for n, p in ftt.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead
    with torch.no_grad():
        assert (ftt(h) - ftt(h.flip(1))).abs().max() < 1e-5  # order-blind at init
    opt = torch.optim.Adam(ftt.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        loss = (ftt(h) - target).pow(2).sum() + (ftt(h.flip(1)) + target).pow(2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert (ftt(h) - ftt(h.flip(1))).abs().max() > 1.0
