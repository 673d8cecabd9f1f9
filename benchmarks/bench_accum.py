"""Peak memory and time of one Ours-Q training step at the same batch, in one pass and in feature-cached
micro-batches (train.accum_steps, engine.trainer.FeatureCachedStep).

    .venv/bin/python benchmarks/bench_accum.py [--batch 32] [--accum 4] [--frames 5] [--image-size 224]
        [--repeats 3] [--threads N] [key=value ...]

The model is configs/base.yaml's (Chinese-CLIP ViT-B/16 with its RoBERTa text tower, random init; every loss
term on, train.mode=query), a batch of --batch micro-videos of --frames frames with their texts and queries;
key=value overrides shrink it for a quick run (e.g. model.backbone.vision_model=RN50). A step is forward,
backward and an AdamW step, as in the trainer (on a GPU under train.amp's autocast). Each setting runs in a
fresh process: the optimizer state made first, then one warm-up step and --repeats timed ones. Memory, over
those steps: on a GPU torch.cuda.max_memory_allocated, on the CPU the process's peak resident memory
(ru_maxrss); both as the peak and as what the steps add to the memory held before them (weights, optimizer
state, the batch).
Printed: each setting's numbers and the ratios accum / one pass.
"""
import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from engine.trainer import AMP_DTYPES, Embedder, FeatureCachedStep  # noqa: E402
from models import build_model  # noqa: E402
from utils.config import load_config  # noqa: E402


def make(args, device):
    cfg = load_config(os.path.join(REPO, "configs", "base.yaml"), ["train.mode=query", "loss.recon=true",
                                                                   f"data.image_size={args.image_size}",
                                                                   *args.overrides])
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    d, b = cfg["data"], args.batch
    lq, lt, size = d["query_max_len"], d["text_max_len"], d["image_size"]
    batch = {"query_ids": torch.randint(672, 8000, (b, lq)), "query_mask": torch.ones(b, lq, dtype=torch.long),
             "frames": torch.randn(b, args.frames, 3, size, size),
             "text_ids": torch.randint(672, 8000, (b, lt)), "text_mask": torch.ones(b, lt, dtype=torch.long)}
    for ids in (batch["query_ids"], batch["text_ids"]):
        ids[:, 0], ids[:, -1] = 101, 102
    return cfg, model, {k: v.to(device) for k, v in batch.items()}


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args, accum):
    """One setting in this fresh process -> a JSON line of its memory and mean step seconds."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg, model, batch = make(args, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    dtype = AMP_DTYPES[cfg["train"]["amp"]] if device.type == "cuda" else None
    autocast = torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    cache = FeatureCachedStep(model, Embedder(model), accum, scaler) if accum > 1 else None

    def step():
        optimizer.zero_grad(set_to_none=True)
        if cache:
            cache.forward(batch, autocast)
            cache.backward(autocast)
        else:
            with autocast:
                loss = model(batch)["loss"]
            scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    # the optimizer state, made by a step on zero gradients, is held before the measured steps
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = resident_bytes()
    times = []
    for _ in range(args.repeats + 1):  # the first one warms up (not timed, in the peak as the others)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # KiB on Linux
    print(json.dumps({"device": device.type, "before": before, "peak": peak, "seconds": sum(times[1:]) / args.repeats}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--accum", type=int, default=4)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()
    if args.batch % args.accum:
        sys.exit(f"--accum {args.accum} must divide --batch {args.batch}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args, args.child)
    results = {}
    for accum in (1, args.accum):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(accum), "--batch", str(args.batch),
               "--accum", str(args.accum), "--frames", str(args.frames), "--image-size", str(args.image_size),
               "--repeats", str(args.repeats), *(["--threads", str(args.threads)] if args.threads else []),
               *args.overrides]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"accum {accum} failed:\n{proc.stderr[-3000:]}")
        r = results[accum] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"accum {accum} ({r['device']}): peak {r['peak'] / 2 ** 30:.2f} GiB, held before the step "
              f"{r['before'] / 2 ** 30:.2f} GiB, the step adds {(r['peak'] - r['before']) / 2 ** 30:.2f} GiB; "
              f"{r['seconds']:.2f} s per step")
    one, acc = results[1], results[args.accum]
    print(f"batch {args.batch} x {args.frames} frames at {args.image_size} px, accum {args.accum} / accum 1: "
          f"peak memory {acc['peak'] / one['peak']:.2f}, memory the step adds "
          f"{(acc['peak'] - acc['before']) / (one['peak'] - one['before']):.2f}, time {acc['seconds'] / one['seconds']:.2f}")


if __name__ == "__main__":
    main()
