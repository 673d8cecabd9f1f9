"""One row of the paper's Table 2 from the results of the two directions.

Columns: Video2goods R@10/20/50/100, Goods2video R@10/20/50/100, Overall R@10/20/50/100
(mean of the two directions) and Mean (mean of the four Overall values, taken before
rounding). Values print with two decimals rounded half up, as the paper does
(Ours-Q: (36.66 + 47.91) / 2 = 42.285 -> 42.29).
"""
import csv
import json
import os
from decimal import ROUND_HALF_UP, Decimal

KS = ("10", "20", "50", "100")
COLUMNS = ([f"V2G R@{k}" for k in KS] + [f"G2V R@{k}" for k in KS] + [f"Overall R@{k}" for k in KS] + ["Mean"])


def fmt(value):
    return str(Decimal(repr(float(value))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def load_results(path, direction):
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    if results.get("direction") not in (None, direction):
        raise ValueError(f"{path}: expected {direction} results, the file holds {results['direction']}")
    missing = [k for k in KS if k not in results.get("recall", {})]
    if missing:
        raise ValueError(f"{path}: expected recall at K = {', '.join(KS)}; R@{', R@'.join(missing)} missing")
    return results


def table_row(v2g, g2v):
    """13 values in the paper's column order from two results dicts (recall in percent)."""
    a = [float(v2g["recall"][k]) for k in KS]
    b = [float(g2v["recall"][k]) for k in KS]
    overall = [(x + y) / 2 for x, y in zip(a, b)]
    return a + b + overall + [sum(overall) / len(overall)]


def print_row(name, values):
    width = max(len(name), 6)
    print(f"{'':{width}}  " + "  ".join(f"{h:^30}" for h in ("Video2goods", "Goods2video", "Overall")))
    print(f"{'Method':{width}}  " + "  ".join("  ".join(f"{'R@' + k:>6}" for k in KS) for _ in range(3))
          + f"  {'Mean':>6}")
    cells = [fmt(v) for v in values]
    print(f"{name:{width}}  " + "  ".join("  ".join(f"{c:>6}" for c in cells[i:i + 4]) for i in (0, 4, 8))
          + f"  {cells[12]:>6}")


def write_row(name, values, out_dir):
    """Append the row to <out_dir>/results.md and results.csv (each gets its header when new)."""
    os.makedirs(out_dir, exist_ok=True)
    md, csv_path = os.path.join(out_dir, "results.md"), os.path.join(out_dir, "results.csv")
    new_md, new_csv = not os.path.exists(md), not os.path.exists(csv_path)
    with open(md, "a", encoding="utf-8") as f:
        if new_md:
            f.write("| Method | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 1) + "\n")
        f.write(f"| {name} | " + " | ".join(fmt(v) for v in values) + " |\n")
    with open(csv_path, "a", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        if new_csv:
            writer.writerow(["Method"] + COLUMNS)
        writer.writerow([name] + [fmt(v) for v in values])
    return md, csv_path
