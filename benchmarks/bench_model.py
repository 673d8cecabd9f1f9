"""Cost of one training step of the full-size models (ViT-B-16 + RoBERTa-base) on this machine.

--task retrieval (Ours-Q): forward + backward of 2 videos x 5 frames at 224 px with their texts
(90 tokens) and 2 queries (20 tokens), every loss term on. --task pretrain1 / pretrain2: the
pre-training model's stage 1 (VTC + VTM + MLM) and stage 2 (EPL, towers frozen) on the same
videos and texts, with --entities prompts per level (the entity embeddings of stage 2 are
computed once, in a warm-up step before the measured ones; the entity lists are written to a temporary
data.root for the model builder). Reports the wall time, the FLOPs counted by
torch.utils.flop_counter.FlopCounterMode, the achieved FLOP/s as a fraction of this machine's
float32 matmul FLOP/s (measured in the same run), and the peak resident memory of a fresh
process running the step with and without gradient checkpointing.

    .venv/bin/python benchmarks/bench_model.py [--repeats 3] [--threads N]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from datasets.annotations import DatasetPaths  # noqa: E402
from models import build_model, build_pretrain_model  # noqa: E402
from utils.config import load_config  # noqa: E402

BATCH, FRAMES = 2, 5
STAGES = {"pretrain1": "1", "pretrain2": "2"}


def make_model_and_batch(grad_checkpointing, task="retrieval", entities=(30, 300, 3000)):
    extra = ["task=pretrain", f"pretrain.stage={STAGES[task]}"] if task in STAGES else []
    with tempfile.TemporaryDirectory() as root:
        cfg = load_config(os.path.join(REPO, "configs", "base.yaml"),
                          [f"model.backbone.grad_checkpointing={str(grad_checkpointing).lower()}", f"data.root={root}",
                           *extra])
        torch.manual_seed(0)
        if task in STAGES:
            paths = DatasetPaths.from_config(cfg["data"])
            os.makedirs(paths.entities_dir)
            for level, m in enumerate(entities, start=1):
                with open(paths.entities_file(level), "w", encoding="utf-8") as f:
                    f.writelines(f"实体{i}\n" for i in range(m))
            model = build_pretrain_model(cfg).train()
        else:
            model = build_model(cfg).train()
    d = cfg["data"]
    lq, lt, size = d["query_max_len"], d["text_max_len"], d["image_size"]
    batch = {"query_ids": torch.randint(672, 8000, (BATCH, lq)), "query_mask": torch.ones(BATCH, lq, dtype=torch.long),
             "frames": torch.randn(BATCH, FRAMES, 3, size, size),
             "text_ids": torch.randint(672, 8000, (BATCH, lt)), "text_mask": torch.ones(BATCH, lt, dtype=torch.long),
             "epoch": 0}
    for ids in (batch["query_ids"], batch["text_ids"]):
        ids[:, 0], ids[:, -1] = 101, 102
    return model, batch


def step(model, batch):
    model.zero_grad(set_to_none=True)
    model(batch)["loss"].backward()


def matmul_flops_per_second(n=2048, repeats=10):
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def child(grad_checkpointing, task, entities):
    """Run in a fresh process: resident memory before the step and the process peak after it."""
    model, batch = make_model_and_batch(grad_checkpointing, task, entities)
    with open("/proc/self/statm") as f:
        rss_before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    start = time.perf_counter()
    step(model, batch)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"rss_before_step": rss_before, "peak_rss": peak, "seconds": seconds}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--task", choices=["retrieval", *STAGES], default="retrieval")
    parser.add_argument("--entities", default="30,300,3000", help="entity prompts of levels 1,2,3 (pre-training)")
    parser.add_argument("--child", choices=["ckpt", "nockpt"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    entities = tuple(int(m) for m in args.entities.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args.child == "ckpt", args.task, entities)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; task {args.task}")
    # Memory first, while this process is small: Linux carries ru_maxrss over fork and exec.
    for name, flag in (("without gradient checkpointing", "nockpt"), ("with gradient checkpointing", "ckpt")):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", flag, "--task", args.task,
               "--entities", args.entities]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"peak RSS {name}: {res['peak_rss'] / 2 ** 30:.2f} GiB "
              f"(model and inputs {res['rss_before_step'] / 2 ** 30:.2f} GiB, step adds "
              f"{(res['peak_rss'] - res['rss_before_step']) / 2 ** 30:.2f} GiB; first step {res['seconds']:.1f} s)")

    model, batch = make_model_and_batch(False, args.task, entities)
    step(model, batch)  # warm-up (stage 2 computes its entity embeddings once here)
    n_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: {n_params / 1e6:.1f} M parameters ({trainable / 1e6:.1f} M trainable); batch: {BATCH} videos x {FRAMES} frames "
          f"{tuple(batch['frames'].shape[-2:])} px, text {batch['text_ids'].shape[1]} tokens, queries {batch['query_ids'].shape[1]} tokens"
          + (f"; entity prompts per level {entities}" if args.task == "pretrain2" else ""))

    with FlopCounterMode(display=False) as counter:
        step(model, batch)
    flops = counter.get_total_flops()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step(model, batch)
        times.append(time.perf_counter() - start)
    peak_mm = matmul_flops_per_second()
    best = min(times)
    print(f"forward+backward: best {best:.2f} s, mean {sum(times) / len(times):.2f} s over {len(times)} runs")
    print(f"FLOPs per step (FlopCounterMode): {flops / 1e9:.1f} GFLOP")
    print(f"achieved: {flops / best / 1e9:.1f} GFLOP/s; fp32 matmul 2048^3 on this machine: {peak_mm / 1e9:.1f} GFLOP/s; "
          f"fraction {flops / best / peak_mm:.2f}")


if __name__ == "__main__":
    main()
