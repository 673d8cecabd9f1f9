"""The table row reproduces the Overall and Mean columns of the paper's Table 2 from its two directions."""
import pytest

import evaluation
from evaluate.table import fmt, table_row

# Rows of Table 2 (Real400K): Video2goods R@10/20/50/100, Goods2video x4, Overall x4, Mean.
# Some other rows of the printed table do not obey the paper's own arithmetic (e.g. FashionCLIP-infer
# Overall R@20 16.92 vs (14.03 + 19.08) / 2 = 16.555), so they are not used here.
PAPER_ROWS = {
    "Ours-Q": "36.66 46.97 57.91 66.85 47.91 55.64 64.61 72.45 42.29 51.31 61.26 69.65 56.13",
    "Ours-Q + Pretrain": "38.90 49.06 59.37 67.82 49.46 57.31 67.98 73.60 44.18 53.19 63.68 70.71 57.94",
    "ChineseCLIP-infer": "23.34 30.92 39.52 47.47 27.30 34.46 43.83 51.78 25.32 32.69 41.68 49.63 37.33",
    "ChineseCLIP-ft": "30.09 38.09 48.66 57.33 34.00 38.87 47.34 53.73 32.05 38.48 48.00 55.53 43.51",
    "CLIP-infer": "14.62 19.87 27.59 33.08 19.11 24.05 32.31 38.78 16.87 21.96 29.95 35.93 26.18",
}
KS = ("10", "20", "50", "100")


def _results(direction, values):
    return {"direction": direction, "recall": dict(zip(KS, map(float, values)))}


@pytest.mark.parametrize("name", list(PAPER_ROWS))
def test_row_reproduces_overall_and_mean(name):
    paper = PAPER_ROWS[name].split()
    row = table_row(_results("video2goods", paper[:4]), _results("goods2video", paper[4:8]))
    assert [fmt(v) for v in row] == paper


def test_rounding_is_half_up():
    assert fmt(42.285) == "42.29" and fmt(56.125) == "56.13" and fmt(1 / 3 * 100) == "33.33"


def test_table_command_prints_and_appends(tmp_path, capsys):
    import json
    paper = PAPER_ROWS["Ours-Q"].split()
    for name, direction, values in (("v.json", "video2goods", paper[:4]), ("g.json", "goods2video", paper[4:8])):
        (tmp_path / name).write_text(json.dumps(_results(direction, values)))
    for row_name in ("first", "second"):
        evaluation.main(["table", str(tmp_path / "v.json"), str(tmp_path / "g.json"), "--name", row_name,
                         "--out-dir", str(tmp_path)])
    assert "42.29" in capsys.readouterr().out
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0].startswith("| Method | V2G R@10") and md[0].count("|") == 15
    assert md[2] == "| first | " + " | ".join(paper) + " |" and md[3].startswith("| second |")
    csv = (tmp_path / "results.csv").read_text().splitlines()
    assert len(csv) == 3 and csv[1] == "first," + ",".join(paper)
    with pytest.raises(ValueError, match="expected video2goods"):
        evaluation.main(["table", str(tmp_path / "g.json"), str(tmp_path / "v.json")])
