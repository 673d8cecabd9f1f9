"""Feature extraction throughput with 0 and 2 DataLoader workers (one process, the demo model, the mini set).

    .venv/bin/python benchmarks/bench_extract.py [--config configs/demo.yaml] [--repeats 2] [key=value ...]

Run it from the repository root: the demo config reads data/mini (sh scripts/mini_dataset.sh makes
it). Extracts the video2goods gallery (1,000 goods images) and query list (100 videos of 5 frames)
with data.num_workers 0 and 2, alternately `--repeats` times, each into a fresh folder, and reports
items/s and the ratio of 2 workers to 0.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from datasets import build_eval_dataset, collate_eval  # noqa: E402
from datasets.annotations import GALLERY_DOMAIN, QUERY_DOMAIN, DatasetPaths  # noqa: E402
from evaluate.extract import extract_features  # noqa: E402
from models import build_model  # noqa: E402
from utils.config import load_config  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(REPO, "configs", "demo.yaml"))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    torch.set_num_threads(1)  # the workers decode, the main process encodes: as in a 1-GPU rank
    model = build_model(cfg).eval()
    paths = DatasetPaths.from_config(cfg["data"])
    lists = {"gallery": (paths.gallery_list("video2goods"), GALLERY_DOMAIN["video2goods"]),
             "query": (paths.query_list("video2goods"), QUERY_DOMAIN["video2goods"])}
    rates = {(side, w): [] for side in lists for w in (0, 2)}
    for _ in range(args.repeats):
        for workers in (0, 2):
            for side, (list_path, domain) in lists.items():
                dataset = build_eval_dataset(cfg, list_path, domain)
                with tempfile.TemporaryDirectory() as out:
                    start = time.perf_counter()
                    extract_features(model, dataset, {"fused": out}, batch_size=cfg["eval"]["batch_size"],
                                     num_workers=workers, collate_fn=collate_eval, desc=f"{side} {workers} workers")
                    rates[side, workers].append(len(dataset) / (time.perf_counter() - start))
    print(f"{os.cpu_count()} cores; items/s, median of {args.repeats}:")
    for side in lists:
        zero, two = statistics.median(rates[side, 0]), statistics.median(rates[side, 2])
        print(f"{side:8s} 0 workers {zero:7.1f}   2 workers {two:7.1f}   ratio {two / zero:.2f}")


if __name__ == "__main__":
    main()
