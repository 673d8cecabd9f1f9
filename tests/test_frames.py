"""Frame selection (segment rule, repeat-last padding), image reading and decord decoding."""
import random

import pytest
import torch
from PIL import Image

from datasets.frames import UnreadableImage, decode_video, load_image, match_sizes, segment_indices


def test_eval_indices_are_segment_centres():
    assert segment_indices(10, 5) == [1, 3, 5, 7, 9]
    assert segment_indices(7, 5) == [0, 2, 3, 4, 6]  # 0.7, 2.1, 3.5, 4.9, 6.3 rounded down
    assert segment_indices(1, 1) == [0]
    for length in range(5, 60):
        assert segment_indices(length, 5) == [int((2 * i + 1) * length / 10) for i in range(5)]


def test_train_indices_fall_in_their_segment_and_cover_it():
    rng = random.Random(0)
    length, t = 23, 5
    bounds = [(i * length // t, (i + 1) * length // t) for i in range(t)]  # 0,4,9,13,18,23
    seen = [set() for _ in range(t)]
    for _ in range(500):
        indices = segment_indices(length, t, rng)
        for i, (lo, hi) in enumerate(bounds):
            assert lo <= indices[i] < hi
            seen[i].add(indices[i])
    assert seen == [set(range(lo, hi)) for lo, hi in bounds]  # every frame of every segment drawn


def test_fewer_frames_than_clip_repeat_the_last():
    assert segment_indices(3, 5) == [0, 1, 2, 2, 2]
    assert segment_indices(3, 5, random.Random(1)) == [0, 1, 2, 2, 2]
    assert segment_indices(1, 5) == [0] * 5
    with pytest.raises(ValueError):
        segment_indices(0, 5)


def write_jpeg(path, color, size=(40, 30)):
    Image.new("RGB", size, color).save(path, "JPEG", quality=95)


def test_load_image_reads_rgb_and_names_unreadable_files(tmp_path):
    good = tmp_path / "good.jpg"
    write_jpeg(good, (200, 10, 10))
    image = load_image(good)
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    assert abs(int(image[0].float().mean()) - 200) <= 2 and int(image[1].float().mean()) <= 12

    gray = tmp_path / "gray.png"
    Image.new("L", (8, 8), 77).save(gray)
    assert load_image(gray).shape == (3, 8, 8) and int(load_image(gray)[2, 0, 0]) == 77

    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(UnreadableImage, match="truncated.jpg"):
        load_image(truncated)
    with pytest.raises(UnreadableImage, match="missing.jpg.*not found"):
        load_image(tmp_path / "missing.jpg")


def test_match_sizes_resizes_odd_sized_frames_to_the_first():
    a = torch.full((3, 20, 30), 9, dtype=torch.uint8)
    b = torch.full((3, 10, 15), 9, dtype=torch.uint8)
    clip = torch.stack(match_sizes([a, b]))
    assert clip.shape == (2, 3, 20, 30) and bool((clip == 9).all())
    assert match_sizes([a, a])[1] is a  # frames of one size are passed on as they are


def test_decord_decodes_the_segment_rule_frames(tmp_path, gray_video):
    levels = [20 * k + 10 for k in range(10)]
    path = tmp_path / "v.mp4"
    gray_video(path, levels)
    clip = decode_video(path, 5)
    assert clip.dtype == torch.uint8 and clip.shape == (5, 3, 32, 32)
    decoded = clip.float().mean(dim=(1, 2, 3))
    expected = torch.tensor([float(levels[i]) for i in segment_indices(10, 5)])
    assert torch.allclose(decoded, expected, atol=4)

    rng_a, rng_b = random.Random(3), random.Random(3)
    train = decode_video(path, 5, rng_a).float().mean(dim=(1, 2, 3))
    assert torch.allclose(train, torch.tensor([float(levels[i]) for i in segment_indices(10, 5, rng_b)]), atol=4)

    short = tmp_path / "short.mp4"
    gray_video(short, [30, 130, 230])
    padded = decode_video(short, 5).float().mean(dim=(1, 2, 3))
    assert torch.allclose(padded, torch.tensor([30.0, 130, 230, 230, 230]), atol=4)


def test_decord_errors_name_the_file(tmp_path, gray_video):
    with pytest.raises(UnreadableImage, match="none.mp4.*not found"):
        decode_video(tmp_path / "none.mp4", 5)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 50)
    with pytest.raises(UnreadableImage, match="bad.mp4"):
        decode_video(bad, 5)
