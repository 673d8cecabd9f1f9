"""The table row reproduces the Overall and Mean columns of the paper's Table 2 from its two directions."""
import pytest

import evaluation
from evaluate.table import PAPER_TABLES, fmt, table_row

# Some rows of the printed Table 2 do not obey the paper's own arithmetic (e.g. FashionCLIP-infer
# Overall R@20 16.92 vs (14.03 + 19.08) / 2 = 16.555), so only these are checked against it.
CONSISTENT = ["Ours-Q", "Ours-Q + Pretrain", "ChineseCLIP-infer", "ChineseCLIP-ft", "CLIP-infer"]
KS = ("10", "20", "50", "100")


def _results(direction, values):
    return {"direction": direction, "recall": dict(zip(KS, map(float, values)))}


@pytest.mark.parametrize("name", CONSISTENT)
def test_row_reproduces_overall_and_mean(name):
    paper = PAPER_TABLES["Table 2"][name]
    row = table_row(_results("video2goods", paper[:4]), _results("goods2video", paper[4:8]))
    assert [fmt(v) for v in row] == paper


def test_rounding_is_half_up():
    assert fmt(42.285) == "42.29" and fmt(56.125) == "56.13" and fmt(1 / 3 * 100) == "33.33"


def _write(tmp_path, values, checkpoint="run/checkpoint_latest.pth.tar"):
    import json
    for name, direction, part in (("v.json", "video2goods", values[:4]), ("g.json", "goods2video", values[4:8])):
        (tmp_path / name).write_text(json.dumps(dict(_results(direction, part), checkpoint=checkpoint)))
    return str(tmp_path / "v.json"), str(tmp_path / "g.json")


def test_table_command_replaces_a_row_of_the_same_name_and_records_its_checkpoint(tmp_path, capsys):
    ours, base = PAPER_TABLES["Table 2"]["Ours-Q"], PAPER_TABLES["Table 2"]["ChineseCLIP-infer"]
    for row_name, values, checkpoint in (("first", base, "a.pth"), ("second", ours, "b.pth"), ("first", ours, "c.pth")):
        v, g = _write(tmp_path, values, checkpoint)
        assert evaluation.main(["table", v, g, "--name", row_name, "--out-dir", str(tmp_path)]) == 0
    assert "42.29" in capsys.readouterr().out
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0].startswith("| Method | V2G R@10") and md[0].endswith("| Mean | Checkpoint |")
    assert md[2:] == ["| first | " + " | ".join(ours) + " | c.pth |", "| second | " + " | ".join(ours) + " | b.pth |"]
    csv = (tmp_path / "results.csv").read_text().splitlines()
    assert csv[1:] == ["first," + ",".join(ours) + ",c.pth", "second," + ",".join(ours) + ",b.pth"]
    with pytest.raises(ValueError, match="expected video2goods"):
        evaluation.main(["table", str(tmp_path / "g.json"), str(tmp_path / "v.json")])


def test_results_of_an_older_release_keep_their_rows(tmp_path):
    """results.csv written before the Checkpoint column: its rows stay, with an empty checkpoint."""
    from evaluate.table import COLUMNS

    old = PAPER_TABLES["Table 2"]["CLIP-infer"]
    (tmp_path / "results.csv").write_text("Method," + ",".join(COLUMNS) + "\nold," + ",".join(old) + "\n")
    v, g = _write(tmp_path, PAPER_TABLES["Table 2"]["Ours-Q"])
    evaluation.main(["table", v, g, "--name", "new", "--out-dir", str(tmp_path)])
    csv = (tmp_path / "results.csv").read_text().splitlines()
    assert csv[0].endswith(",Mean,Checkpoint") and csv[1] == "old," + ",".join(old) + ","
    assert csv[2].startswith("new,36.66,") and csv[2].endswith(",run/checkpoint_latest.pth.tar")


def test_paper_rows_are_printed_beside_the_users(tmp_path, capsys):
    v, g = _write(tmp_path, PAPER_TABLES["Table 2"]["Ours-Q"])
    evaluation.main(["table", v, g, "--name", "mine", "--out-dir", str(tmp_path), "--paper"])
    out = capsys.readouterr().out
    assert out.index("mine ") < out.index("paper (Real400K), Table 2") < out.index("Table 3") < out.index("Table 4")
    lines = out.splitlines()
    row = next(line for line in lines if line.startswith("XCLIP-Q "))
    assert row.split()[1:] == "34.20 43.60 54.51 64.22 43.94 53.36 62.02 71.24 39.07 48.48 58.27 67.73 53.38".split()
    real20m = next(line for line in lines if line.startswith("Q + P (Real20M) "))
    assert real20m.split()[-5:] == ["51.59", "60.61", "69.99", "79.83", "65.50"]
    assert len(PAPER_TABLES["Table 2"]) == 17 and len(PAPER_TABLES["Table 3"]) == 4


def test_checkpoint_cell_names_both_directions_when_they_differ():
    from evaluate.table import checkpoint_of

    assert checkpoint_of({"checkpoint": "a.pth"}, {"checkpoint": "a.pth"}) == "a.pth"
    assert checkpoint_of({"checkpoint": "a.pth"}, {"checkpoint": "b.pth"}) == "a.pth / b.pth"
    assert checkpoint_of({"checkpoint": "a.pth"}, {"checkpoint": None}) == "a.pth / -"
    assert checkpoint_of({"checkpoint": None}, {}) == ""


def test_table_arguments_have_help_texts(capsys):
    with pytest.raises(SystemExit):
        evaluation.main(["table", "-h"])
    usage, listing = capsys.readouterr().out.split("positional arguments:")
    assert "the paper's row" in usage
    for arg in ("v2g", "g2v", "--name NAME", "--out-dir OUT_DIR", "--paper"):
        line = next(line for line in listing.splitlines() if line.strip().startswith(arg))
        assert len(line.split(None, len(arg.split()))[-1]) > 10, line
