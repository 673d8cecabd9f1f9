"""The table row reproduces the Overall and Mean columns of the paper's Table 2 from its two directions."""
import pytest

import evaluation
from evaluate.metrics import PAPER_KS
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
    from evaluate.table import columns

    old = PAPER_TABLES["Table 2"]["CLIP-infer"]
    (tmp_path / "results.csv").write_text("Method," + ",".join(columns()) + "\nold," + ",".join(old) + "\n")
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
    for arg in ("v2g", "g2v", "--name NAME", "--out-dir OUT_DIR", "--k K,K,...", "--paper"):
        line = next(line for line in listing.splitlines() if line.strip().startswith(arg))
        assert len(line.split(None, len(arg.split()))[-1]) > 10, line


def _write_recall(path, direction, recall):
    import json
    path.write_text(json.dumps({"direction": direction, "recall": {str(k): v for k, v in recall.items()}}))
    return str(path)


# R@K of a search with the default K (evaluate.metrics.SEARCH_KS): R@1 and R@5 beside the paper's
V2G = {1: 11.0, 5: 22.5, 10: 30.0, 20: 40.0, 50: 50.0, 100: 60.0}
G2V = {1: 13.0, 5: 25.0, 10: 34.0, 20: 44.0, 50: 52.0, 100: 64.0}


def test_k_option_picks_the_columns_and_the_mean_is_over_them(tmp_path, capsys):
    v = _write_recall(tmp_path / "v.json", "video2goods", V2G)
    g = _write_recall(tmp_path / "g.json", "goods2video", G2V)
    assert evaluation.main(["table", v, g, "--name", "COPE-ft", "--k", "1,5,10", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["Method"] + ["R@1", "R@5", "R@10"] * 3 + ["Mean"]
    # Overall (11 + 13) / 2 = 12, (22.5 + 25) / 2 = 23.75, (30 + 34) / 2 = 32; Mean (12 + 23.75 + 32) / 3 = 22.583...
    expected = "11.00 22.50 30.00 13.00 25.00 34.00 12.00 23.75 32.00 22.58".split()
    assert out[2].split() == ["COPE-ft"] + expected
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0] == ("| Method | V2G R@1 | V2G R@5 | V2G R@10 | G2V R@1 | G2V R@5 | G2V R@10 | Overall R@1 | "
                     "Overall R@5 | Overall R@10 | Mean | Checkpoint |")
    assert md[2] == "| COPE-ft | " + " | ".join(expected) + " |  |"
    # the default columns are the paper's, from the same files
    evaluation.main(["table", v, g, "--name", "COPE-ft", "--out-dir", str(tmp_path / "paper_ks")])
    row = capsys.readouterr().out.splitlines()[2].split()
    assert row[1:5] == ["30.00", "40.00", "50.00", "60.00"] and row[9:] == ["32.00", "42.00", "51.00", "62.00", "46.75"]
    # one results.csv holds one set of columns
    with pytest.raises(ValueError, match=r"results\.csv: expected the header Method,V2G R@10,.* its own --out-dir"):
        evaluation.main(["table", v, g, "--out-dir", str(tmp_path)])


def test_results_without_r1_say_so_and_the_papers_columns_still_read_them(tmp_path, capsys):
    """A results.json of a search that scored only the paper's K (an older release, or eval.topk=[10, 20, 50, 100])."""
    old = {k: V2G[k] for k in (10, 20, 50, 100)}
    v = _write_recall(tmp_path / "v.json", "video2goods", old)
    g = _write_recall(tmp_path / "g.json", "goods2video", G2V)
    with pytest.raises(ValueError, match=r"v\.json: no R@1, R@5; the file holds R@10, R@20, R@50, R@100\. Search again "
                                         r"with eval.topk=null .* or give --k among 10, 20, 50, 100"):
        evaluation.main(["table", v, g, "--k", "1,5,10", "--out-dir", str(tmp_path)])
    assert not (tmp_path / "results.csv").exists()
    assert evaluation.main(["table", v, g, "--out-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[1:5] == ["30.00", "40.00", "50.00", "60.00"]


@pytest.mark.parametrize("text", ["1,x", "0,5", "5,5", ""])
def test_bad_k_is_an_argument_error(tmp_path, capsys, text):
    with pytest.raises(SystemExit) as stop:
        evaluation.main(["table", "v.json", "g.json", "--k", text])
    assert stop.value.code == 2
    assert "expected distinct integers >= 1, comma-separated (e.g. 1,5,10)" in capsys.readouterr().err


def _beside(out, name):
    return next(line for line in out.splitlines() if line.startswith(name + " (paper"))


def test_paper_prints_the_row_of_the_same_name_under_ours_or_says_it_has_none(tmp_path, capsys):
    paper = PAPER_TABLES["Table 2"]["ChineseCLIP-ft"]
    v = _write_recall(tmp_path / "v.json", "video2goods", {**V2G, **dict(zip(PAPER_KS, map(float, paper[:4])))})
    g = _write_recall(tmp_path / "g.json", "goods2video", {**G2V, **dict(zip(PAPER_KS, map(float, paper[4:8])))})
    for name in ("ChineseCLIP-ft", "COPE-ft", "COPE-Q"):
        evaluation.main(["table", v, g, "--name", name, "--out-dir", str(tmp_path), "--paper"])
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert lines[2].startswith(name + " ") and lines[3] == _beside(out, name)
    assert _beside(out, "COPE-Q").split()[2:] == "not in the paper (none of its Tables 2-4 has this row)".split()
    evaluation.main(["table", v, g, "--name", "ChineseCLIP-ft", "--out-dir", str(tmp_path / "p"), "--paper"])
    assert _beside(capsys.readouterr().out, "ChineseCLIP-ft").split()[4:] == paper
    # the paper reports no R@1 or R@5, nor a Mean over these K
    evaluation.main(["table", v, g, "--name", "ChineseCLIP-ft", "--k", "1,5,10", "--out-dir", str(tmp_path / "k"),
                     "--paper"])
    assert _beside(capsys.readouterr().out, "ChineseCLIP-ft").split()[4:] == \
        ["-", "-", paper[0], "-", "-", paper[4], "-", "-", paper[8], "-"]
    # Table 4 gives only the Overall columns
    evaluation.main(["table", v, g, "--name", "Q + P (Real20M)", "--out-dir", str(tmp_path / "t4"), "--paper"])
    assert _beside(capsys.readouterr().out, "Q + P (Real20M)").split()[7:] == \
        ["-"] * 8 + "51.59 60.61 69.99 79.83 65.50".split()


def test_row_names_of_the_cope_family_and_an_unknown_one():
    from evaluate.table import table2_row_name

    assert table2_row_name("cope", "ft") == "COPE-ft" and table2_row_name("cope", "query") == "COPE-Q"
    assert "COPE-ft" not in {name for rows in PAPER_TABLES.values() for name in rows}
    with pytest.raises(ValueError, match=r"model.family='openclip': no row name for it; expected one of chinese_clip"):
        table2_row_name("openclip", "ft")
