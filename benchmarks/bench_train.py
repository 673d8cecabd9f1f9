"""Training throughput of a config on this machine: 2 processes x 1 thread against 1 process x 2 threads.

    .venv/bin/python benchmarks/bench_train.py [--config configs/demo.yaml] [--steps 40] [key=value ...]

Each layout trains `--steps` optimizer steps through train.sh (fresh output folder, no resume) and
reads the run's metrics.jsonl: samples/s (global batch x steps / wall time) and the share of the
step time spent waiting for the next batch, both averaged over the log windows after the first
(start-up and warm-up excluded). The per-process batch is the config's in both layouts, so the
2-process layout has twice the global batch; `--same-global-batch` doubles the 1-process batch.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from utils.config import load_config  # noqa: E402
from utils.logging import read_metrics  # noqa: E402


def run(config, nproc, threads, steps, log_every, overrides, port):
    out = tempfile.mkdtemp(prefix=f"bench_train_{nproc}x{threads}_")
    cmd = ["sh", os.path.join(REPO, "train.sh"), config, f"output_dir={out}", "resume=null",
           f"train.max_steps={steps}", f"train.threads={threads}", f"train.log_every={log_every}",
           f"train.save_every_steps={10 * steps}", *overrides]
    env = dict(os.environ, NPROC_PER_NODE=str(nproc), MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    records = [r for s, r in sorted(read_metrics(os.path.join(out, "metrics.jsonl")).items()) if s > log_every]
    if not records:
        sys.exit(f"--steps {steps} leaves no log window after the first (log every {log_every} steps)")
    return {
        "processes": nproc, "threads": threads,
        "samples_per_s": sum(r["perf/samples_per_s"] for r in records) / len(records),
        "data_wait_fraction": sum(r["perf/data_wait_fraction"] for r in records) / len(records),
        "step_time_s": sum(r["perf/step_time_s"] for r in records) / len(records),
        "wall_s_including_startup": wall,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--same-global-batch", action="store_true", help="1 process gets 2 x train.batch_size")
    p.add_argument("--port", type=int, default=29533)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()
    batch = load_config(args.config, args.overrides)["train"]["batch_size"]

    results = [run(args.config, 2, 1, args.steps, args.log_every, args.overrides, args.port)]
    one = list(args.overrides) + ([f"train.batch_size={2 * batch}"] if args.same_global_batch else [])
    results.append(run(args.config, 1, 2, args.steps, args.log_every, one, args.port))
    print(f"{args.config}, {args.steps} steps, batch per process {batch}"
          f"{' (1 process: ' + str(2 * batch) + ')' if args.same_global_batch else ''}, cores {os.cpu_count()}")
    print(f"{'layout':<22}{'samples/s':>10}{'step s':>9}{'data wait':>11}{'wall s':>9}")
    for r in results:
        print(f"{r['processes']} proc x {r['threads']} thread{'s' if r['threads'] > 1 else ' '}      "
              f"{r['samples_per_s']:>10.1f}{r['step_time_s']:>9.3f}{r['data_wait_fraction']:>10.1%}"
              f"{r['wall_s_including_startup']:>9.1f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
