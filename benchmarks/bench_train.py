"""Training throughput of a config on this machine: 2 processes x 1 thread against 1 process x 2 threads.

    .venv/bin/python benchmarks/bench_train.py [--config configs/demo.yaml] [--steps 40] [key=value ...]

Run it from the repository root: the demo config reads data/mini (sh scripts/mini_dataset.sh makes it).

Each layout trains `--steps` optimizer steps through train.sh (fresh output folder, no resume),
`--repeats` times, interleaved with the other layout, and reads the runs' metrics.jsonl. Over the
log windows after the first (start-up excluded): samples/s = samples / wall time of those
windows, the median samples/s of a window (robust to bursts of load from other processes on a
shared machine), and the share of the step time spent waiting for the next batch. The batch per
process is the config's in both layouts, so 2 processes have twice the global batch;
`--same-global-batch` doubles the batch of the 1-process layout.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from utils.config import load_config  # noqa: E402
from utils.logging import read_metrics  # noqa: E402


def run(config, nproc, threads, steps, log_every, overrides, port, global_batch):
    """Train once; -> the log windows after the first: [(steps, seconds, data-wait seconds, step seconds)]."""
    out = tempfile.mkdtemp(prefix=f"bench_train_{nproc}x{threads}_")
    cmd = ["sh", os.path.join(REPO, "train.sh"), config, f"output_dir={out}", "resume=null",
           f"train.max_steps={steps}", f"train.threads={threads}", f"train.log_every={log_every}",
           f"train.save_every_steps={10 * steps}", *overrides]
    env = dict(os.environ, NPROC_PER_NODE=str(nproc), MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    records = read_metrics(os.path.join(out, "metrics.jsonl"))
    shutil.rmtree(out)
    windows, previous = [], 0
    for step, r in sorted(records.items()):
        n = step - previous
        if previous >= log_every:  # the first window holds start-up and the first (slow) iterations
            samples = r["perf/samples_per_s"]
            wall = n * global_batch / samples
            step_s = n * r["perf/step_time_s"]
            windows.append((n, wall, step_s * r["perf/data_wait_fraction"], step_s))
        previous = step
    if not windows:
        sys.exit(f"--steps {steps} leaves no log window after the first (log every {log_every} steps)")
    return windows


def summarise(windows, global_batch):
    steps = sum(w[0] for w in windows)
    rates = sorted(w[0] * global_batch / w[1] for w in windows)
    return {"steps": steps, "samples_per_s": steps * global_batch / sum(w[1] for w in windows),
            "median_window_samples_per_s": statistics.median(rates),
            "data_wait_fraction": sum(w[2] for w in windows) / sum(w[3] for w in windows)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--same-global-batch", action="store_true", help="1 process gets 2 x train.batch_size")
    p.add_argument("--repeats", type=int, default=2, help="runs per layout, interleaved")
    p.add_argument("--port", type=int, default=29533)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()
    batch = load_config(args.config, args.overrides)["train"]["batch_size"]

    layouts = [(2, 1, list(args.overrides), 2 * batch),
               (1, 2, list(args.overrides) + ([f"train.batch_size={2 * batch}"] if args.same_global_batch else []),
                2 * batch if args.same_global_batch else batch)]
    windows = {(nproc, threads): [] for nproc, threads, _, _ in layouts}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):  # interleaved, so that a burst of load from elsewhere hits both layouts
        for nproc, threads, overrides, global_batch in layouts:
            windows[nproc, threads] += run(args.config, nproc, threads, args.steps, args.log_every, overrides,
                                           args.port, global_batch)
    print(f"{args.config}: {args.repeats} x {args.steps} steps per layout, batch per process {batch}"
          f"{' (1 process: ' + str(2 * batch) + ')' if args.same_global_batch else ''}; {os.cpu_count()} cores, "
          f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"{'layout':<22}{'global batch':>13}{'samples/s':>11}{'median window':>15}{'data wait':>11}")
    results = []
    for nproc, threads, _, global_batch in layouts:
        r = dict(processes=nproc, threads=threads, global_batch=global_batch,
                 **summarise(windows[nproc, threads], global_batch))
        results.append(r)
        print(f"{nproc} proc x {threads} thread{'s' if threads > 1 else ' '}      {global_batch:>13}"
              f"{r['samples_per_s']:>11.1f}{r['median_window_samples_per_s']:>15.1f}{r['data_wait_fraction']:>10.1%}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
