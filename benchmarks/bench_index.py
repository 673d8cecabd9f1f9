"""The training index against parsing the training list into Python objects, at Real20M's size.

    .venv/bin/python benchmarks/bench_index.py [--queries 1000000] [--keep DIR]

Generates a train.txt of `--queries` queries with 0-10 goods and 0-20 video pids each (at least one
item), then measures, each in a fresh process: parse_train_file; the first load_train_index (build);
a cached load_train_index (open); one epoch plan of the sampler over the index (80 per process x 8
ranks); 2 forked DataLoader workers reading 10,000 random entries each, from the index and from the
parsed list. Reports seconds, the process's resident memory after the step, the workers' private
memory growth, and the ratios.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEP = """
import json, sys, time
sys.path.insert(0, {repo!r})
t0 = time.perf_counter()
{code}
seconds = time.perf_counter() - t0
with open("/proc/self/statm") as f:
    rss = int(f.read().split()[1]) * 4096
print(json.dumps({{"seconds": seconds, "rss_mb": rss / 2**20}}))
"""
# 2 DataLoader workers (forked) each read 10,000 random entries; each reports the growth of its private
# (resident minus file-backed) memory: pages of parsed objects get copied when their reference counts change.
WORKERS = """import random, torch
def private_mb():
    fields = open("/proc/self/statm").read().split()
    return (int(fields[1]) - int(fields[2])) * 4096 / 2**20
class Reads(torch.utils.data.Dataset):
    def __len__(self):
        return 2
    def __getitem__(self, worker):
        rng, before = random.Random(worker), private_mb()
        for _ in range(10000):
            index[rng.randrange(len(index))]
        return private_mb() - before
growth = list(torch.utils.data.DataLoader(Reads(), batch_size=None, num_workers=2))
print(json.dumps({"worker_growth_mb": growth}))
"""
STEPS = {
    "parse": "from datasets.annotations import parse_train_file\nentries = parse_train_file({path!r})",
    "build": "from datasets.train_index import load_train_index\nindex = load_train_index({path!r}, {cache!r})",
    "open": "from datasets.train_index import load_train_index\nindex = load_train_index({path!r}, {cache!r})",
    "workers": "from datasets.train_index import load_train_index\nindex = load_train_index({path!r}, {cache!r})\n"
               "{workers}",
    "workers_parsed": "from datasets.annotations import parse_train_file\nindex = parse_train_file({path!r})\n{workers}",
    "plan": ("from datasets.train_index import load_train_index\nfrom datasets.sampler import DomainBatchSampler\n"
             "index = load_train_index({path!r}, {cache!r})\nt0 = time.perf_counter()\n"
             "DomainBatchSampler(index, 80, 0, 8, seed=0)"),
}


def generate(path, queries, seed=0):
    rng = random.Random(seed)
    words = [chr(0x4E00 + i) for i in range(3000)]
    pid = 10_000_000
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(queries):
            goods, videos = rng.randint(0, 10), rng.randint(0, 20)
            if goods + videos == 0:
                goods = 1
            g = ",".join(str(pid + k) for k in range(goods)) or "None"
            v = ",".join(str(pid + 100 + k) for k in range(videos)) or "None"
            pid += 200
            f.write(f"{''.join(rng.choices(words, k=rng.randint(2, 12)))}\t{g}\t{v}\n")


def measure(name, path, cache):
    code = STEP.format(repo=REPO, code=STEPS[name].format(path=path, cache=cache, workers=WORKERS))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = {}
    for line in out.stdout.strip().splitlines():
        result.update(json.loads(line))
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--queries", type=int, default=1_000_000)
    p.add_argument("--keep", help="folder for the generated file and the cache (default: a temporary one)")
    args = p.parse_args()
    folder = args.keep or tempfile.mkdtemp(prefix="bench_index_")
    path, cache = os.path.join(folder, "train.txt"), os.path.join(folder, "cache")
    t0 = time.perf_counter()
    generate(path, args.queries)
    print(f"{args.queries} queries, {os.path.getsize(path) / 2**20:.0f} MB, generated in "
          f"{time.perf_counter() - t0:.0f} s")
    results = {name: measure(name, path, cache) for name in ("parse", "build", "open", "plan", "workers",
                                                             "workers_parsed")}
    for name, r in results.items():
        extra = (f"   private memory growth of each of 2 workers after 10,000 random reads: "
                 f"{', '.join(f'{g:.1f}' for g in r['worker_growth_mb'])} MB") if "worker_growth_mb" in r else ""
        print(f"{name:14s} {r['seconds']:7.2f} s   resident {r['rss_mb']:7.0f} MB{extra}")
    parse, build, opened = results["parse"], results["build"], results["open"]
    print(f"build / parse: {build['seconds'] / parse['seconds']:.2f} x time; open / parse: "
          f"{opened['seconds'] / parse['seconds']:.3f} x time, {opened['rss_mb'] / parse['rss_mb']:.2f} x memory; "
          f"epoch plan {results['plan']['seconds']:.1f} s")


if __name__ == "__main__":
    main()
