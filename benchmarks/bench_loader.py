"""The training loader against its limit: items/s with data.format files vs lmdb, cold and warm, 0 and 2 workers,
against decoding the same JPEGs and nothing else, and fast decoding (data.fast_decode) against full decoding.

    python benchmarks/bench_loader.py [--videos 120] [--frames 5] [--width 1280] [--height 720] [--size 224]
                                      [--workers 0 2] [--dir DIR]

Generates a set of photo-like frames (`--videos` training videos of `--frames` JPEGs of width x height), packs it
with scripts/pack_dataset.py's `pack` (no resize, and --resize-short 256 for the disk ratio and its PSNR), then
runs one epoch of the training loader (data.preprocess=cn_clip at `--size`) per setting. A cold run first drops
the set's pages from the page cache with posix_fadvise(DONTNEED) on every source file, or on the LMDB files
(no root needed; it drops clean pages of this set only). Everything is printed as ratios from this one run.
"""
import argparse
import builtins
import gc
import math
import os
import random
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import build_train_loader  # noqa: E402
from datasets import packed  # noqa: E402
from datasets.annotations import DatasetPaths, shard  # noqa: E402
from datasets.frames import load_image  # noqa: E402
from datasets.transforms import TrainClipTransform  # noqa: E402
from utils.config import load_config  # noqa: E402

# the paper's per-GPU batch: 80 micro-videos of 5 frames and 80 goods images
PAPER_VIDEOS, PAPER_GOODS = 80, 80
STEP_SECONDS = (0.5, 1.0)  # a plausible V100 step of the ViT-B/16 QCD model at that batch (an assumption)


def write_frame(path, width, height, rng, np_rng):
    """A smooth colour field with shapes and sensor-like noise: compresses like a photo frame."""
    coarse = np_rng.integers(0, 256, (5, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y, r = rng.randrange(width), rng.randrange(height), rng.randrange(height // 12, height // 3)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rng.randrange(256) for _ in range(3)))
    img = img.filter(ImageFilter.GaussianBlur(1))
    noisy = np.asarray(img).astype(np.int16) + np_rng.integers(-5, 6, (height, width, 3), dtype=np.int16)
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)


def generate(root, videos, frames, width, height, seed=0, distinct=20):
    """A data root of `videos` training queries with one video each (frameid, frames, text) -> DatasetPaths;
    the frame files are copies of `distinct` generated ones (each its own file, as the page cache sees it)."""
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    originals = []
    paths = DatasetPaths(root)
    os.makedirs(os.path.dirname(paths.train_file), exist_ok=True)
    lines = []
    for i in range(videos):
        pid = 1_000_000 + i
        names = [f"{shard(pid)}/{pid}_{k}.jpg" for k in range(frames)]
        for name in names:
            os.makedirs(os.path.join(paths.images_dir("video"), shard(pid)), exist_ok=True)
            path = os.path.join(paths.images_dir("video"), name)
            if len(originals) < distinct:
                write_frame(path, width, height, rng, np_rng)
                originals.append(path)
            else:
                shutil.copyfile(originals[rng.randrange(distinct)], path)
        for path, text in ((paths.frameid_path(pid), ",".join(names) + "\n"),
                           (paths.text_path("video", pid), f"视频{i}\n商品标题{i}\n正文{i}\n")):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        lines.append(f"查询{i}\tNone\t{pid}\n")
    with open(paths.train_file, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return paths


def files_under(folder):
    for top, _, names in os.walk(folder):
        for name in names:
            yield os.path.join(top, name)


def disk_bytes(folder):
    return sum(os.stat(p).st_blocks * 512 for p in files_under(folder))


def drop_cache(folder):
    """Drop the pages of every file under `folder` from the page cache (written back first: dirty pages stay;
    pages a process still maps stay too, so this one must map none of them)."""
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as f:
            mapped = sorted({line.split()[-1] for line in f if os.path.abspath(folder) + os.sep in line})
        if mapped:
            raise RuntimeError(f"{', '.join(mapped)} still mapped by this process: its pages would stay cached")
    os.sync()
    for path in files_under(folder):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def epoch_timer(cfg):
    """A function timing one epoch of the training loader of `cfg`, in samples per second (the workers' start
    included, not the build)."""
    loader, sampler = build_train_loader(cfg, rank=0, world_size=1)
    sampler.set_epoch(1)

    def rate():
        start = time.perf_counter()
        samples = sum(len(batch["pids"]) for batch in loader)
        return samples / (time.perf_counter() - start)

    return rate


class OpenCounter:
    """Counts builtins.open calls (PIL's and the text readers' file opens) in this process."""

    def __enter__(self):
        self.count, self.real = 0, builtins.open

        def counting(*args, **kwargs):
            self.count += 1
            return self.real(*args, **kwargs)

        builtins.open = counting
        return self

    def __exit__(self, *exc):
        builtins.open = self.real


def opens_per_sample(cfg, samples=40):
    loader, sampler = build_train_loader(cfg, rank=0, world_size=1)
    sampler.set_epoch(1)
    dataset, plan = loader.dataset, [s for batch in sampler for s in batch][:samples]
    dataset[plan[0]]  # opens the LMDB environment of its shard (once per process)
    with OpenCounter() as counter:
        for sample in plan[1:]:
            dataset[sample]
    return counter.count / (len(plan) - 1)


def cold_read_rate(paths, out, frames, data_format, readahead=True):
    """Frames per second of reading the bytes alone, in a shuffled order, from a dropped page cache."""
    order = random.Random(0).sample(frames, len(frames))
    store = packed.LmdbStore(paths, out)
    envs = {}
    drop_cache(paths.data_dir if data_format == "files" else out)
    start = time.perf_counter()
    for path in order:
        if data_format == "files":
            with open(path, "rb") as f:
                f.read()
            continue
        name = store.shard_of("video", int(os.path.basename(path).split("_")[0]))
        if name not in envs:
            envs[name] = packed.open_shard(os.path.join(out, name), readahead=readahead)
        with envs[name].begin() as txn:
            bytes(txn.get(packed.entry_key(store.data_dir, path)))
    rate = len(frames) / (time.perf_counter() - start)
    for env in envs.values():
        env.close()
    return rate


def decode_rate(frames, draft):
    """Frames per second of one pass of JPEG decoding alone over `frames` (`draft` None: full decode)."""
    start = time.perf_counter()
    for path in frames:
        load_image(path, draft=draft)
    return len(frames) / (time.perf_counter() - start)


def fast_decode_psnr(frames, size, num=20):
    """PSNR (dB) of the training transform's output from a reduced decode against a full decode, same crops."""
    transform = TrainClipTransform(size)
    errors = []
    for seed, path in enumerate(frames[:num]):
        full = transform(load_image(path)[None], seed=seed) / transform.normalize.scale
        fast = transform(load_image(path, draft=transform.decode_size)[None], seed=seed) / transform.normalize.scale
        errors.append(float(((full - fast) ** 2).mean()))
    return 10 * math.log10(255 ** 2 / (sum(errors) / len(errors)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=120)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--repeats", type=int, default=3, help="warm epochs and decode passes, the best of which counts")
    p.add_argument("--dir", help="work folder (default: a temporary one, removed after)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root, out, small = (os.path.join(tmp, n) for n in ("root", "lmdb", "lmdb256"))
        start = time.perf_counter()
        paths = generate(root, args.videos, args.frames, args.width, args.height)
        print(f"generated {args.videos} videos x {args.frames} frames of {args.width}x{args.height} in "
              f"{time.perf_counter() - start:.0f} s")
        source = disk_bytes(paths.data_dir)
        start = time.perf_counter()
        packed.pack(paths, out, shard_items=max(1, args.videos // 4), log=lambda line: None)
        pack_rate = args.videos / (time.perf_counter() - start)
        resized = packed.pack(paths, small, shard_items=max(1, args.videos // 4), resize_short=256,
                              psnr_size=args.size, log=lambda line: None)
        print(f"pack: {pack_rate:.1f} items/s (0 workers); disk: lmdb / files {disk_bytes(out) / source:.3f}, "
              f"lmdb --resize-short 256 / files {disk_bytes(small) / source:.3f} "
              f"(PSNR at {args.size}x{args.size}: mean {resized['resize']['psnr_mean_db']:.1f} dB, "
              f"min {resized['resize']['psnr_min_db']:.1f} dB)")

        def cfg(data_format, workers, fast=False):
            return load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                            "base.yaml"),
                               [f"data.root={root}", f"data.image_size={args.size}", f"data.num_frames={args.frames}",
                                "train.batch_size=8", f"data.num_workers={workers}", f"data.format={data_format}",
                                f"data.lmdb_root={out}", f"data.fast_decode={str(fast).lower()}",
                                f"output_dir={tmp}/run"])

        torch.set_num_threads(1)
        rates, timers = {}, {}
        for workers in args.workers:
            for data_format, folder in (("files", paths.data_dir), ("lmdb", out)):
                drop_cache(folder)
                rates[data_format, workers, "cold"] = epoch_timer(cfg(data_format, workers))()
                timers[data_format, workers, "warm"] = epoch_timer(cfg(data_format, workers))
            timers["lmdb+fast", workers, "warm"] = epoch_timer(cfg("lmdb", workers, fast=True))
        frames = sorted(p for p in files_under(paths.images_dir("video")) if p.endswith(".jpg"))
        drafts = {"full": None, "fast": TrainClipTransform(args.size).decode_size}
        # warm epochs and decode passes take turns, so that other processes' load weighs on all; the best counts
        decode = dict.fromkeys(drafts, 0.0)
        for _ in range(args.repeats):
            for key in timers:
                rates[key] = max(rates.get(key, 0.0), timers[key]())
            for mode, draft in drafts.items():
                decode[mode] = max(decode[mode], decode_rate(frames, draft))
        full, fast = decode["full"], decode["fast"]
        timers.clear()  # the loaders' LMDB maps: pages a process maps cannot be dropped for the cold reads
        gc.collect()
        # video samples per second if decoding were all the loader did
        limit, fast_limit = full / args.frames, fast / args.frames
        reads = {(f, ra): cold_read_rate(paths, out, frames, f, ra) for f, ra in (("files", True), ("lmdb", True),
                                                                                   ("lmdb", False))}
        print(f"items/s (video samples of {args.frames} frames; cold: page cache dropped with posix_fadvise, one "
              f"epoch; warm: the best of {args.repeats} epochs):")
        for (name, workers, state), rate in rates.items():
            print(f"  {name:10s} {workers} workers {state}: {rate:7.1f}")
        print(f"decode-only limit, one process, the best of {args.repeats} passes: {limit:.1f} video samples/s full "
              f"decode ({full:.0f} frames/s), {fast_limit:.1f} fast ({fast:.0f} frames/s)")
        for workers in args.workers:
            print(f"ratios, {workers} workers: lmdb cold / files cold {rates['lmdb', workers, 'cold'] / rates['files', workers, 'cold']:.2f}; "
                  f"lmdb warm / files warm {rates['lmdb', workers, 'warm'] / rates['files', workers, 'warm']:.2f}; "
                  f"lmdb+fast warm / lmdb warm {rates['lmdb+fast', workers, 'warm'] / rates['lmdb', workers, 'warm']:.2f}")
        if 0 in args.workers:
            print(f"ratios, one process: warm loader / decode-only limit, full decode: files "
                  f"{rates['files', 0, 'warm'] / limit:.2f}, lmdb {rates['lmdb', 0, 'warm'] / limit:.2f}; fast decode "
                  f"(the training default): lmdb {rates['lmdb+fast', 0, 'warm'] / fast_limit:.2f}")
        print(f"JPEG decode alone, fast / full {fast / full:.2f} (PSNR of the training crops, fast against full: "
              f"{fast_decode_psnr(frames, args.size):.1f} dB)")
        print(f"cold reads of the frame bytes alone, shuffled: lmdb / files {reads['lmdb', True] / reads['files', True]:.2f}; "
              f"lmdb readahead off / on {reads['lmdb', False] / reads['lmdb', True]:.2f} "
              f"(files {reads['files', True]:.0f} frames/s)")
        opens = opens_per_sample(cfg('files', 0))
        print(f"files opened per video sample: files {opens:.1f}, "
              f"lmdb {opens_per_sample(cfg('lmdb', 0)):.1f} (plus one environment per shard and process)")
        for workers in args.workers:
            # seconds per sample in one process; files cold reaches 1/3 of lmdb cold when its opens make it 3 x lmdb's
            lmdb_s, files_s = ((workers or 1) / rates[f, workers, "cold"] for f in ("lmdb", "files"))
            per_open = max(0.0, 3 * lmdb_s - files_s) / opens * 1000
            print(f"break-even, {workers} workers: lmdb cold / files cold reaches 3 where each file open costs "
                  f"{per_open:.1f} ms more than on this disk (a network file system's round trips; extrapolated, "
                  f"not measured)")
        if 0 in args.workers:  # the per-core rate
            video_s = 1 / rates["lmdb+fast", 0, "warm"]
            step = PAPER_VIDEOS * video_s + PAPER_GOODS * video_s / args.frames  # a goods sample: about one frame
            # whole cores, rounded up: a fraction left over is a core the loader still waits for
            cores = ", ".join(f"{step / t:.1f}, so {math.ceil(step / t)} cores, at {t:g} s" for t in STEP_SECONDS)
            print(f"estimate: the paper's per-GPU batch ({PAPER_VIDEOS} videos x {args.frames} frames + {PAPER_GOODS} "
                  f"goods) takes {step:.1f} core-seconds to load (lmdb, fast decode, this machine's core); loader cores "
                  f"per GPU for a step of {cores} (an estimate: a goods sample counted as 1/{args.frames} of a video)")


if __name__ == "__main__":
    main()
