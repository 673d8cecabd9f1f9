"""Clip transforms: one crop and flip for all frames, cn_clip's preprocessing at eval, CLIP normalisation;
the authors' profile (data.preprocess=authors) against a computation of their loader written here."""
import json
import os

import numpy as np
import pytest
import torch
from cn_clip.clip.utils import image_transform
from PIL import Image
from torchvision.transforms.v2 import functional as F

from datasets import build_eval_dataset, build_train_loader
from datasets.annotations import DatasetPaths
from datasets.families import image_stats
from datasets.transforms import (CLIP_MEAN, CLIP_STD, INTERPOLATION, PREPROCESS_PROFILES, AuthorsTrainClipTransform,
                                 EvalClipTransform, TrainClipTransform, eval_transform, train_clip_transform)
from engine.checks import validate_config
from evaluate.pipeline import model_made_by
from tests.helpers import REPO_ROOT
from utils.config import ConfigError, load_config

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


def random_image(h=48, w=64, seed=0):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_train_transform_applies_one_crop_and_flip_to_every_frame():
    transform = TrainClipTransform(24, (0.64, 1.0))
    image = random_image()
    copies = image.expand(5, -1, -1, -1)
    for seed in range(10):
        out = transform(copies, seed=seed)
        assert out.shape == (5, 3, 24, 24) and out.dtype == torch.float32
        assert all(torch.equal(out[0], out[k]) for k in range(1, 5))

    # distinct frames: frame k of the clip is what frame k alone gets with the same draw
    clip = torch.stack([random_image(seed=k) for k in range(3)])
    for seed in range(5):
        out = transform(clip, seed=seed)
        for k in range(3):
            assert torch.equal(out[k], transform(clip[k:k + 1], seed=seed)[0])
        # the loader's list of channels-last frames gives the clip's output
        views = [frame.permute(1, 2, 0).contiguous().permute(2, 0, 1) for frame in clip]
        assert torch.equal(transform(views, seed=seed), out)


def test_train_transform_varies_with_seed_flips_and_leaves_global_rng_alone():
    transform = TrainClipTransform(24, (0.64, 1.0))
    image = random_image()[None]
    outs = [transform(image, seed=s) for s in range(20)]
    assert len({o.sum().item() for o in outs}) > 10  # crops differ between draws
    assert torch.equal(transform(image, seed=3), outs[3])

    # a full-frame crop of a left/right asymmetric image shows whether it was flipped
    full = TrainClipTransform(24, (1.0, 1.0))
    half = torch.zeros(1, 3, 24, 24, dtype=torch.uint8)
    half[..., :12] = 255
    left_bright = [bool(full(half, seed=s)[0, 0, :, :12].mean() > full(half, seed=s)[0, 0, :, 12:].mean())
                   for s in range(40)]
    assert 5 < sum(left_bright) < 35  # both orientations occur

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    transform(image, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_crop_scale_bounds_the_crop_area():
    # a 64x64 image whose pixel value encodes its column: the crop's width shows in the output's range
    ramp = torch.arange(64, dtype=torch.uint8).mul(4).expand(1, 3, 64, 64).contiguous()
    transform = TrainClipTransform(16, (0.64, 1.0))
    for seed in range(30):
        out = transform(ramp, seed=seed)[0, 0] * CLIP_STD[0] + CLIP_MEAN[0]
        span = (out.max() - out.min()) * 255 / 4  # columns covered, up to the resampling at the borders
        # area >= 0.64 and aspect ratio <= 4/3 give a width of at least sqrt(0.64 * 0.75) * 64 = 44 columns
        assert span > 40


@pytest.mark.parametrize("width,height", [(90, 160), (160, 90), (100, 100), (31, 17)])
@pytest.mark.parametrize("size", [16, 224])
def test_eval_transform_is_cn_clips(structured_image, width, height, size):
    image = structured_image(width, height)
    expected = image_transform(size)(image)
    assert (eval_transform(size)(image) - expected).abs().max() < 1e-4
    # the clip form: uint8 frames of different sizes, each preprocessed on its own
    frames = [torch.from_numpy(np.array(image)).permute(2, 0, 1), torch.from_numpy(np.array(structured_image(40, 30, 1))).permute(2, 0, 1)]
    out = EvalClipTransform(size)(frames)
    assert out.shape == (2, 3, size, size)
    assert (out[0] - expected).abs().max() < 1e-4
    assert (out[1] - image_transform(size)(structured_image(40, 30, 1))).abs().max() < 1e-4


def test_eval_transform_keeps_the_whole_portrait_frame():
    # top and bottom quarters red and blue: a centre crop would lose them, the squashed whole image keeps them
    bands = np.zeros((160, 90, 3), dtype=np.uint8)
    bands[:40, :, 0] = 255
    bands[40:120, :, 1] = 255
    bands[120:, :, 2] = 255
    out = eval_transform(16)(Image.fromarray(bands)) * STD + MEAN
    assert out[0, :3].mean() > 0.9 and out[2, -3:].mean() > 0.9


def test_train_crop_is_drawn_on_the_squashed_geometry(structured_image):
    """A crop of scale 1 is the whole image squashed to S x S, as at test time, whatever the aspect ratio."""
    portrait = torch.from_numpy(np.array(structured_image(54, 96))).permute(2, 0, 1)[None]
    full = TrainClipTransform(16, (1.0, 1.0))
    squashed = F.resize(portrait, [16, 16], interpolation=INTERPOLATION, antialias=True)
    for seed in range(8):
        out = full(portrait, seed=seed)
        restored = (out * STD + MEAN) * 255
        assert any(torch.allclose(restored, candidate.float(), atol=0.01)
                   for candidate in (squashed, torch.flip(squashed, [-1])))


def test_normalisation_of_a_uniform_image():
    value = 100
    clip = torch.full((1, 3, 32, 32), value, dtype=torch.uint8)
    out = EvalClipTransform(32)(clip)[0]
    assert torch.allclose(out, ((value / 255 - MEAN) / STD).expand(3, 32, 32), atol=1e-5)


# ----------------------------------------------------------------------------- data.preprocess=authors
# The authors' loader (train_cross_domain_emb.py get_loaders) normalises with ImageNet's statistics
AUTHORS_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
AUTHORS_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)
CONFIGS = os.path.join(REPO_ROOT, "configs")
SHAPES = {"portrait": (90, 160), "landscape": (160, 90), "square": (100, 100), "odd": (31, 17)}


def authors_pixels(image, size, resample):
    """Their pipeline on one PIL image: squashed to size x size by PIL, /255, ImageNet-normalised -> [3, S, S]."""
    array = np.asarray(image.convert("RGB").resize((size, size), resample), dtype=np.float32) / 255
    return torch.from_numpy((array.transpose(2, 0, 1) - AUTHORS_MEAN) / AUTHORS_STD)


def as_frame(image):
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("size", [16, 224])
def test_authors_eval_transform_is_their_val_transform(structured_image, shape, size):
    """Their val_transform: Resize((S, S)) with PIL bilinear (the 'nearest' default maps to BILINEAR in their
    resize_clip), a centre crop that keeps the whole square, ImageNet statistics."""
    image = structured_image(*SHAPES[shape])
    expected = authors_pixels(image, size, Image.BILINEAR)
    assert (eval_transform(size, preprocess="authors")(image) - expected).abs().max() < 1e-5
    out = EvalClipTransform(size, "authors")([as_frame(image), as_frame(structured_image(40, 30, 1))])
    assert out.shape == (2, 3, size, size)
    assert (out[0] - expected).abs().max() < 1e-5
    assert (out[1] - authors_pixels(structured_image(40, 30, 1), size, Image.BILINEAR)).abs().max() < 1e-5
    # the pixels differ from cn_clip's profile (bicubic, CLIP statistics) by far more than the tolerance
    assert (eval_transform(size)(image) - expected).abs().max() > 0.05


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_authors_train_transform_is_their_train_transform(structured_image, shape):
    """Their RandomResizedCrop resizes the uncropped clip with PIL nearest (its 'bilinear' default maps to
    NEAREST), then RandomHorizontalFlip flips the whole clip or none of it; ImageNet statistics."""
    size = 27  # torch's nearest-exact resampling differs from PIL's at this size
    images = [structured_image(*SHAPES[shape], seed=k) for k in range(3)]
    clip = torch.stack([as_frame(image) for image in images])
    expected = torch.stack([authors_pixels(image, size, Image.NEAREST) for image in images])
    transform = train_clip_transform(size, (0.64, 1.0), "authors")
    flipped = []
    for seed in range(16):
        out = transform(clip, seed=seed)
        assert out.shape == (3, 3, size, size) and out.dtype == torch.float32
        plain, mirrored = (out - expected).abs().max(), (out - torch.flip(expected, [-1])).abs().max()
        assert min(plain, mirrored) < 1e-5
        flipped.append(bool(mirrored < plain))
    assert 2 < sum(flipped) < 14  # both orientations occur
    assert torch.equal(transform(clip, seed=5), train_clip_transform(size, (0.1, 0.2), "authors")(clip, seed=5))
    torch.manual_seed(123)
    reference = torch.rand(3)
    torch.manual_seed(123)
    transform(clip, seed=7)
    assert torch.equal(torch.rand(3), reference)


def test_unknown_profile_is_refused_by_the_config_check():
    """The allowed profiles are the transforms' own; the check of the config refuses any other."""
    assert PREPROCESS_PROFILES == ("cn_clip", "authors")
    for profile in PREPROCESS_PROFILES:
        validate_config(load_config(os.path.join(CONFIGS, "base.yaml"), [f"data.preprocess={profile}"]))
    cfg = load_config(os.path.join(CONFIGS, "base.yaml"), ["data.preprocess=imagenet"])
    with pytest.raises(ConfigError, match=r"data.preprocess='imagenet': expected one of \['cn_clip', 'authors'\]"):
        validate_config(cfg)


def test_authors_statistics_replace_every_familys(tmp_path):
    """data.preprocess=authors normalises with ImageNet's statistics whatever the family's own are;
    cn_clip keeps the family's (here a folder's image processor)."""
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.4, 0.3],
                                                                   "image_std": [0.2, 0.25, 0.3]}))
    fashion, chinese = ("fashionclip", str(tmp_path)), ("chinese_clip", None)
    for family in (fashion, chinese):
        mean, std = image_stats(*family, "authors")
        assert np.allclose(mean, AUTHORS_MEAN.ravel()) and np.allclose(std, AUTHORS_STD.ravel())
    assert image_stats(*fashion, "cn_clip") == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert image_stats(*chinese) == (CLIP_MEAN, CLIP_STD)


def test_data_preprocess_reaches_the_test_and_training_pipelines(mini_root):
    overrides = [f"data.root={mini_root}", "data.image_size=24", "data.num_frames=3", "train.batch_size=4",
                 "data.num_workers=0"]
    configs = {p: load_config(os.path.join(CONFIGS, "base.yaml"), overrides + [f"data.preprocess={p}"])
               for p in ("cn_clip", "authors")}
    cfg = configs["authors"]
    dataset = build_eval_dataset(cfg, DatasetPaths.from_config(cfg["data"]).gallery_list("video2goods"))
    item = dataset.items[0]
    with Image.open(os.path.join(dataset.paths.images_dir(item.domain), item.frames[0])) as image:
        expected = authors_pixels(image, 24, Image.BILINEAR)
    assert (dataset[0]["frames"][0] - expected).abs().max() < 1e-5
    loader, _ = build_train_loader(cfg, 0, 1)
    assert isinstance(loader.dataset.transform, AuthorsTrainClipTransform)
    # features made with one profile are not reused for the other
    assert model_made_by(configs["authors"]) != model_made_by(configs["cn_clip"])
