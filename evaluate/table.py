"""One row of the paper's Table 2 from the results of the two directions.

Columns, for the K of the table (the paper's 10, 20, 50, 100 by default, or those of `table --k`):
Video2goods R@K, Goods2video R@K, Overall R@K (mean of the two directions) and Mean (mean of the
Overall values, taken before rounding). Values print with two decimals rounded half up, as the paper
does (Ours-Q: (36.66 + 47.91) / 2 = 42.285 -> 42.29).
"""
import csv
import io
import json
import os
from decimal import ROUND_HALF_UP, Decimal

from evaluate.features import write_text
from evaluate.metrics import PAPER_KS, SEARCH_KS


def columns(ks=PAPER_KS):
    """The table's column names for the K of `ks`."""
    return ([f"V2G R@{k}" for k in ks] + [f"G2V R@{k}" for k in ks] + [f"Overall R@{k}" for k in ks] + ["Mean"])


def parse_ks(text):
    """`table --k`: "1,5,10" -> (1, 5, 10), each K an integer >= 1, once."""
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1 or len(set(ks)) != len(ks):
        raise ValueError(f"--k {text!r}: expected distinct integers >= 1, comma-separated (e.g. 1,5,10)")
    return ks


def fmt(value):
    return str(Decimal(repr(float(value))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _ks_text(ks):
    return ", ".join(f"R@{k}" for k in ks)


def load_results(path, direction, ks=PAPER_KS):
    """A results.json dict of `direction` that holds R@K at every K of `ks`."""
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    if results.get("direction") not in (None, direction):
        raise ValueError(f"{path}: expected {direction} results, the file holds {results['direction']}")
    recall = results.get("recall")
    if not isinstance(recall, dict):
        raise ValueError(f"{path}: expected a results.json with a 'recall' mapping of K to R@K")
    missing = [k for k in ks if str(k) not in recall]
    if missing:
        # a search of an older release scored only the paper's K
        held = sorted(recall, key=int)
        raise ValueError(f"{path}: no {_ks_text(missing)}; the file holds {_ks_text(held) or 'no R@K'}. Search "
                         f"again with eval.topk=null (K = {', '.join(map(str, SEARCH_KS))}) or give --k among "
                         f"{', '.join(held)}")
    return results


def table_row(v2g, g2v, ks=PAPER_KS):
    """3 len(ks) + 1 values in the table's column order from two results dicts (recall in percent)."""
    a = [float(v2g["recall"][str(k)]) for k in ks]
    b = [float(g2v["recall"][str(k)]) for k in ks]
    overall = [(x + y) / 2 for x, y in zip(a, b)]
    return a + b + overall + [sum(overall) / len(overall)]


# The paper's results on Real400K (Q + P (Real20M): on Real20M), as printed, for `table --paper`.
# Table 4 gives only the Overall columns and Mean: the direction columns are None.
_TABLE2 = """
CLIP-infer 14.62 19.87 27.59 33.08 19.11 24.05 32.31 38.78 16.87 21.96 29.95 35.93 26.18
CyCLIP-infer 15.22 19.89 27.69 34.56 20.11 24.59 32.55 38.92 17.67 22.24 30.12 36.74 26.69
FashionCLIP-infer 10.47 14.03 20.09 24.43 15.32 19.08 25.06 30.40 12.90 16.92 22.58 27.42 19.86
XCLIP-infer 9.21 11.15 13.73 15.85 17.20 18.82 21.85 24.95 13.21 14.99 17.79 20.27 16.60
ChineseCLIP-infer 23.34 30.92 39.52 47.47 27.30 34.46 43.83 51.78 25.32 32.69 41.68 49.63 37.33
CLIP-ft 23.88 32.14 41.55 49.86 27.45 32.71 41.08 47.96 25.67 32.43 41.32 48.91 37.08
CyCLIP-ft 24.95 31.39 41.60 49.62 28.57 33.69 42.13 48.78 26.76 32.54 41.87 49.20 37.59
FashionCLIP-ft 24.09 32.12 41.33 49.05 27.85 34.64 44.78 52.94 25.97 33.38 43.06 51.00 38.35
XCLIP-ft 26.49 34.37 45.36 54.91 31.51 38.20 47.07 54.14 29.00 36.29 46.22 54.53 41.51
ChineseCLIP-ft 30.09 38.09 48.66 57.33 34.00 38.87 47.34 53.73 32.05 38.48 48.00 55.53 43.51
CLIP-Q 28.16 36.27 46.58 55.18 36.90 42.89 53.48 61.31 32.53 39.57 50.03 58.25 45.10
CyCLIP-Q 28.78 36.05 46.09 54.63 36.49 42.40 53.83 61.69 32.64 39.23 49.96 58.16 45.00
FashionCLIP-Q 34.84 44.20 55.63 64.84 38.54 45.93 55.08 63.11 36.69 45.07 55.36 63.98 50.27
XCLIP-Q 34.20 43.60 54.51 64.22 43.94 53.36 62.02 71.24 39.07 48.48 58.27 67.73 53.38
ChineseCLIP-Q 33.04 41.46 52.07 59.39 45.39 54.09 63.07 70.35 39.22 47.78 57.57 64.87 52.36
Ours-Q 36.66 46.97 57.91 66.85 47.91 55.64 64.61 72.45 42.29 51.31 61.26 69.65 56.13
Ours-Q + Pretrain 38.90 49.06 59.37 67.82 49.46 57.31 67.98 73.60 44.18 53.19 63.68 70.71 57.94"""
_TABLE3 = """
base (w/o Recon) 31.11 40.03 51.10 58.20 42.17 51.78 61.43 68.02 36.64 45.91 56.27 63.11 50.48
base (w Recon) 33.04 41.46 52.07 59.39 45.39 54.09 63.07 70.35 39.22 47.78 57.57 64.87 52.36
base + FTT 32.84 43.39 54.36 62.49 46.01 54.90 64.12 71.72 39.43 49.15 59.24 67.11 53.73
base + FTT + Fusion (Ours-Q) 36.66 46.97 57.91 66.85 47.91 55.64 64.61 72.45 42.29 51.31 61.26 69.65 56.13"""
_TABLE4 = """
Ours-Q 42.29 51.31 61.26 69.65 56.13
Q + P (w/o EPL) 42.78 52.11 62.53 70.00 56.86
Q + P (w EPL) 44.18 53.19 63.68 70.71 57.94
Q + P (Real20M) 51.59 60.61 69.99 79.83 65.50"""


def _parse(text, num_values):
    """{name: 13 printed cells} of `name v1 v2 ...` lines; a table with fewer values has only the last columns."""
    rows = {}
    for line in text.strip().splitlines():
        name, *values = line.rsplit(None, num_values)
        rows[name] = [None] * (len(columns(PAPER_KS)) - num_values) + values
    return rows


PAPER_TABLES = {"Table 2": _parse(_TABLE2, 13), "Table 3": _parse(_TABLE3, 13), "Table 4": _parse(_TABLE4, 5)}

# Table 2's names of the backbone families (model.family) and of the settings (train.mode)
# (the paper has no COPE rows: `table --paper` marks them with NOT_IN_PAPER)
FAMILY_NAMES = {"chinese_clip": "ChineseCLIP", "clip": "CLIP", "cyclip": "CyCLIP", "fashionclip": "FashionCLIP",
                "xclip": "XCLIP", "cope": "COPE"}
MODE_NAMES = {"infer": "infer", "ft": "ft", "query": "Q"}
NOT_IN_PAPER = "not in the paper (none of its Tables 2-4 has this row)"


def table2_row_name(family, mode):
    """The Table 2 row of a config: ("clip", "infer") -> "CLIP-infer"."""
    for key, value, names in (("model.family", family, FAMILY_NAMES), ("train.mode", mode, MODE_NAMES)):
        if value not in names:
            raise ValueError(f"{key}={value!r}: no row name for it; expected one of {', '.join(names)}")
    return f"{FAMILY_NAMES[family]}-{MODE_NAMES[mode]}"


def paper_row(name, ks=PAPER_KS):
    """(label, cells) of the paper's row called `name` in the columns of `ks`, for printing beside ours: "-"
    where the paper gives no value (a K it does not report, a direction Table 4 leaves out, a Mean over other
    K); (label, NOT_IN_PAPER) for a row the paper does not have."""
    for table, rows in PAPER_TABLES.items():
        if name in rows:
            break
    else:
        return f"{name} (paper)", NOT_IN_PAPER
    printed = dict(zip(columns(PAPER_KS), rows[name]))
    cells = [printed.get(column) or "-" for column in columns(ks)]
    if set(ks) != set(PAPER_KS):
        cells[-1] = "-"
    return f"{name} (paper, {table})", cells


def print_rows(rows, ks=PAPER_KS):
    """Print [(name, cells)] under the header of the K of `ks`; a cell is a number, a printed string or None
    (blank); cells given as one string (e.g. NOT_IN_PAPER) print as that text after the name."""
    width = max([len(name) for name, _ in rows] + [6])
    n = len(ks)
    print(f"{'':{width}}  " + "  ".join(f"{h:^{8 * n - 2}}" for h in ("Video2goods", "Goods2video", "Overall")))
    print(f"{'Method':{width}}  " + "  ".join("  ".join(f"{f'R@{k}':>6}" for k in ks) for _ in range(3))
          + f"  {'Mean':>6}")
    for name, values in rows:
        if isinstance(values, str):
            print(f"{name:{width}}  {values}")
            continue
        cells = ["" if v is None else v if isinstance(v, str) else fmt(v) for v in values]
        print(f"{name:{width}}  " + "  ".join("  ".join(f"{c:>6}" for c in cells[i:i + n]) for i in (0, n, 2 * n))
              + f"  {cells[3 * n]:>6}")


def print_paper():
    for table, rows in PAPER_TABLES.items():
        print(f"\npaper (Real400K), {table}")
        print_rows(list(rows.items()))


def checkpoint_of(v2g, g2v):
    """The checkpoint a row's results came from ('a / b' when the two directions disagree, '-' for none)."""
    a, b = v2g.get("checkpoint") or "", g2v.get("checkpoint") or ""
    return a if a == b else f"{a or '-'} / {b or '-'}"


def _read_rows(csv_path, ks):
    """{name: [printed cells, checkpoint]} of an existing results.csv with the columns of `ks`, in file order
    (an older file without the Checkpoint column gets an empty one)."""
    if not os.path.exists(csv_path):
        return {}
    with open(csv_path, encoding="utf-8", newline="") as f:
        lines = list(csv.reader(f))
    names = columns(ks)
    if not lines or lines[0][:len(names) + 1] != ["Method"] + names:
        raise ValueError(f"{csv_path}: expected the header Method,{','.join(names)}[,Checkpoint] (the columns of "
                         f"--k {','.join(map(str, ks))}); a table of other K needs its own --out-dir")
    return {row[0]: (row[1:] + [""])[:len(names) + 1] for row in lines[1:] if row}


def write_row(name, values, out_dir, checkpoint="", ks=PAPER_KS):
    """Put the row (the columns of `ks`) into <out_dir>/results.csv and results.md: a row of the same name is
    replaced in place, a new name appended. Returns the two paths."""
    os.makedirs(out_dir, exist_ok=True)
    md, csv_path = os.path.join(out_dir, "results.md"), os.path.join(out_dir, "results.csv")
    rows = _read_rows(csv_path, ks)
    rows[name] = [fmt(v) for v in values] + [checkpoint or ""]
    header = ["Method"] + columns(ks) + ["Checkpoint"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows([row_name] + cells for row_name, cells in rows.items())
    write_text(csv_path, buf.getvalue())
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [f"| {row_name} | " + " | ".join(cells) + " |" for row_name, cells in rows.items()]
    write_text(md, "\n".join(lines) + "\n")
    return md, csv_path
