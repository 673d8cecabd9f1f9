"""Search and feature-file costs at the paper's scale (Real400K test: 3,000 queries x 200,000 gallery x 512).

    .venv/bin/python benchmarks/bench_search.py [--queries 3000] [--gallery 200000] [--dim 512] [--k 100]

1. Top-k search of random unit features: faiss IndexFlatIP (evaluate.search) against a blocked
   torch matmul + topk in the same run; both must return the same lists.
2. Size and write (and read) time of the gallery features as .npy float16 / float32 + ids file
   (evaluate.features) against the authors' text format `pid \\t f1,...,f512`.

    .venv/bin/python benchmarks/bench_search.py --ivfpq --gallery 1000000 [--queries 3000] [--nlist 1024]

3. (--ivfpq) Past one machine's memory: a float16 gallery on disk with planted neighbours (each query a
   noisy copy of one gallery item), searched from a memory map by the blocked exact search
   (eval.index=flat) and by IVF-PQ (eval.index=ivf_pq), each in its own process: R@100 of the planted
   items, IVF-PQ's against flat's, the search times and their ratio, and each process's peak memory.
"""
import json
import subprocess
import argparse
import os
import sys
import tempfile
import time

import faiss
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere
from evaluate.features import DTYPES, load_features, read_text_features, save_features, write_text_features
from evaluate.search import search


def random_unit(rng, n, dim):
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def torch_topk(query, gallery, k, block):
    q, g = torch.from_numpy(query), torch.from_numpy(gallery)
    scores, rows = [], []
    for start in range(0, q.shape[0], block):
        s, r = torch.topk(q[start:start + block] @ g.T, k, dim=1)
        scores.append(s)
        rows.append(r)
    return torch.cat(scores).numpy(), torch.cat(rows).numpy()


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


RUN = """
import json, sys, time
import numpy as np
sys.path.insert(0, {repo!r})
from evaluate.search import build_ivfpq, search_blocks, search_index
gallery = np.load({gallery!r}, mmap_mode="r")
query = np.load({query!r})
options = json.loads({options!r})
start = time.perf_counter()
if options["index"] == "flat":
    built = start
    scores, rows = search_blocks(query, gallery, 100, options["block_rows"])
else:
    o = options["ivf_pq"]
    index = build_ivfpq(gallery, o["nlist"], o["m"], o["train_rows"], options["block_rows"])
    built = time.perf_counter()
    scores, rows = search_index(index, query, 100, o["nprobe"])
end = time.perf_counter()
np.save({out!r}, rows)
print(json.dumps({{"build_s": built - start, "search_s": end - built, "peak_mb": peak_mb()}}))
"""
# VmHWM, not ru_maxrss: the latter also counts the parent's pages the child had before exec
PEAK = """
def peak_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
"""


def compare_ivfpq(args):
    """Blocked flat search against IVF-PQ on a gallery memory-mapped from disk (part 3 of the docstring)."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        gallery_path, query_path = os.path.join(d, "gallery.npy"), os.path.join(d, "query.npy")
        gallery = np.lib.format.open_memmap(gallery_path, mode="w+", dtype=np.float16, shape=(args.gallery, args.dim))
        for start in range(0, args.gallery, 100_000):  # written in blocks: the parent never holds it either
            gallery[start:start + 100_000] = random_unit(rng, min(100_000, args.gallery - start), args.dim)
        gallery.flush()
        planted = rng.choice(args.gallery, args.queries, replace=False)
        noise = rng.standard_normal((args.queries, args.dim), dtype=np.float32) * 0.02
        np.save(query_path, gallery[planted].astype(np.float32) + noise)
        del gallery
        print(f"{args.queries} queries (noisy copies of planted gallery items) x {args.gallery} gallery x {args.dim} "
              f"float16 ({args.gallery * args.dim * 2 / 2**30:.2f} GiB on disk), top 100")
        runs = {"flat (blocked)": {"index": "flat", "block_rows": args.block_rows},
                "ivf_pq": {"index": "ivf_pq", "block_rows": args.block_rows,
                           "ivf_pq": {"nlist": args.nlist, "m": args.m, "nprobe": args.nprobe,
                                      "train_rows": args.train_rows}}}
        found = {}
        for name, options in runs.items():
            out = os.path.join(d, "rows.npy")
            code = PEAK + RUN.format(repo=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), gallery=gallery_path,
                              query=query_path, options=json.dumps(options), out=out)
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rows = np.load(out)
            recall = float(np.mean([p in r for p, r in zip(planted, rows)]))
            found[name] = (result, recall)
            print(f"{name:15s} build {result['build_s']:7.1f} s, search {result['search_s']:7.1f} s   R@100 of the "
                  f"planted items {100 * recall:6.2f} %   peak memory {result['peak_mb']:7.0f} MB   {options}")
        base = subprocess.run([sys.executable, "-c", PEAK + "import sys; sys.path.insert(0, sys.argv[1]); "
                               "import evaluate.search; print(peak_mb())",
                               os.path.dirname(os.path.dirname(os.path.abspath(__file__)))],
                              capture_output=True, text=True, check=True)
        print(f"(a process that only imports evaluate.search peaks at {float(base.stdout):.0f} MB)")
        (flat, flat_recall), (ivf, ivf_recall) = found["flat (blocked)"], found["ivf_pq"]
        print(f"ivf_pq / flat: R@100 {ivf_recall / flat_recall:.3f} x; search {flat['search_s'] / ivf['search_s']:.1f} x "
              f"faster, {flat['search_s'] / (ivf['build_s'] + ivf['search_s']):.2f} x with the index build")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ivfpq", action="store_true", help="part 3: blocked flat search against IVF-PQ")
    parser.add_argument("--block-rows", type=int, default=200_000, help="--ivfpq: gallery rows per block")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--m", type=int, default=64)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--train-rows", type=int, default=65536)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--gallery", type=int, default=200000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--block", type=int, default=256, help="queries per torch matmul block")
    parser.add_argument("--dir", default=None, help="where to write the feature files (default: a temp dir)")
    args = parser.parse_args()
    if args.ivfpq:
        return compare_ivfpq(args)

    rng = np.random.default_rng(0)
    query, gallery = random_unit(rng, args.queries, args.dim), random_unit(rng, args.gallery, args.dim)
    print(f"{args.queries} queries x {args.gallery} gallery x {args.dim}, top {args.k}; "
          f"torch threads {torch.get_num_threads()}, faiss threads {faiss.omp_get_max_threads()}, "
          f"faiss GPUs {faiss.get_num_gpus()}")

    (f_scores, f_rows), t_faiss = timed(search, query, gallery, args.k)
    (t_scores, t_rows), t_torch = timed(torch_topk, query, gallery, args.k, args.block)
    same = (f_rows == t_rows).mean()
    print(f"search  faiss IndexFlatIP: {t_faiss:7.2f} s | torch matmul+topk (blocks of {args.block}): {t_torch:7.2f} s")
    print(f"        same neighbour at the same rank: {100 * same:.4f} %, max score difference "
          f"{np.abs(f_scores - t_scores).max():.2e}")
    assert same > 0.999 and np.allclose(f_scores, t_scores, atol=1e-4), "faiss and torch disagree"

    ids = list(range(10_000_000, 10_000_000 + args.gallery))
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        rows = []
        for dtype in DTYPES:
            npy, txt = os.path.join(d, f"{dtype}.npy"), os.path.join(d, f"{dtype}_ids.txt")
            _, t_write = timed(save_features, npy, txt, gallery, ids, dtype)
            _, t_read = timed(load_features, npy, txt)
            rows.append((f".npy {dtype} + ids", os.path.getsize(npy) + os.path.getsize(txt), t_write, t_read))
        text = os.path.join(d, "gallery.feat")
        _, t_write = timed(write_text_features, text, gallery, ids)
        _, t_read = timed(read_text_features, text)
        rows.append(("text pid\\tf1,...", os.path.getsize(text), t_write, t_read))
    print(f"{'gallery features':22} {'size MB':>9} {'write s':>8} {'read s':>8}")
    for name, size, t_write, t_read in rows:
        print(f"{name:22} {size / 1e6:9.1f} {t_write:8.2f} {t_read:8.2f}")


if __name__ == "__main__":
    main()
