"""Clip transforms: one crop and flip for all frames, centre crop at eval, CLIP normalisation."""
import torch

from datasets.transforms import CLIP_MEAN, CLIP_STD, EvalClipTransform, TrainClipTransform

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


def test_eval_transform_takes_the_centre_and_normalises():
    # outer thirds red and blue, middle third green, along the long side: the centre square is all green
    bands = torch.zeros(2, 3, 30, 90, dtype=torch.uint8)
    bands[:, 0, :, :30] = 255
    bands[:, 1, :, 30:60] = 255
    bands[:, 2, :, 60:] = 255
    green = (torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1) - MEAN) / STD
    for image in (bands, bands.transpose(-1, -2).contiguous()):  # wide, then tall
        out = EvalClipTransform(16)(image)
        assert out.shape == (2, 3, 16, 16)
        assert torch.allclose(out, green.expand_as(out), atol=1e-4)


def test_normalisation_of_a_uniform_image():
    value = 100
    clip = torch.full((1, 3, 32, 32), value, dtype=torch.uint8)
    out = EvalClipTransform(32)(clip)[0]
    assert torch.allclose(out, ((value / 255 - MEAN) / STD).expand(3, 32, 32), atol=1e-5)
