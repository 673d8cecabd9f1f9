"""Images per second through the training transform (decode + crop/flip/normalise) on one core,
against JPEG decoding alone on the same files in the same run.

    python benchmarks/bench_transforms.py [--images DIR] [--num 200] [--size 224] [--passes 5] [--preprocess P]

Without --images, `--num` photo-like JPEGs of `--size` px are generated in a temporary folder.
"""
import argparse
import glob
import os
import random
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.frames import load_image  # noqa: E402
from datasets.transforms import PREPROCESS_PROFILES, train_clip_transform  # noqa: E402


def write_images(folder, num, size, seed=0):
    """Smooth colour fields with a few shapes and sensor-like noise: compressible like a photo."""
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    paths = []
    for i in range(num):
        coarse = np_rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x, y, r = rng.randrange(size), rng.randrange(size), rng.randrange(size // 10, size // 3)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rng.randrange(256) for _ in range(3)))
        img = img.filter(ImageFilter.GaussianBlur(1))
        noisy = np.asarray(img).astype(np.int16) + np_rng.integers(-6, 7, (size, size, 3))
        path = os.path.join(folder, f"{i:04d}.jpg")
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def time_pass(paths, transform):
    """Seconds spent decoding and transforming each file, timed around each step: both measured in the
    same pass, so that load from other processes on the machine weighs on them alike."""
    decode = apply = 0.0
    for seed, path in enumerate(paths):
        start = time.perf_counter()
        clip = load_image(path)[None]
        middle = time.perf_counter()
        transform(clip, seed=seed)
        apply += time.perf_counter() - middle
        decode += middle - start
    return decode, apply


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", help="folder of .jpg files (default: generate them)")
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--size", type=int, default=224, help="generated image side and output crop size")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--preprocess", choices=PREPROCESS_PROFILES, default="cn_clip", help="data.preprocess profile")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        if args.images:
            paths = sorted(glob.glob(os.path.join(args.images, "**", "*.jpg"), recursive=True))[:args.num]
            if not paths:
                sys.exit(f"no .jpg files under {args.images}")
        else:
            paths = write_images(tmp, args.num, args.size)
        transform = train_clip_transform(args.size, (0.64, 1.0), args.preprocess)
        time_pass(paths[:5], transform)  # warm-up (lazy imports, allocator)
        # best of several passes: the one least disturbed by other processes
        decode, apply = min((time_pass(paths, transform) for _ in range(args.passes)), key=sum)
        with Image.open(paths[0]) as first:
            shape = f"{first.width}x{first.height}"

    n = len(paths)
    print(f"{n} JPEGs of {shape} px, output {args.size} px, data.preprocess={args.preprocess}, 1 thread, "
          f"best of {args.passes} passes")
    print(f"decode only              : {n / decode:8.1f} images/s ({1e3 * decode / n:.3f} ms/image)")
    print(f"decode + train transform : {n / (decode + apply):8.1f} images/s ({1e3 * (decode + apply) / n:.3f} ms/image)")
    print(f"transform / decode time  : {apply / decode:.2f} (target <= 1.00)")


if __name__ == "__main__":
    main()
