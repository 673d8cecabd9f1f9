"""The authors' text feature files: their padded, concatenated shards read back once per item, bad lines
named, and `evaluation.py export --format authors` writing what search (and their index scripts) read."""
import json
import os
import re

import numpy as np
import pytest

import evaluation
from datasets.annotations import AnnotationError, DatasetPaths, parse_gt, parse_item_list
from evaluate.features import load_features, read_text_features, save_features, write_text_features
from evaluate.search import normalize
from tests.helpers import REPO_ROOT
from utils.config import load_config


def _line(pid, row):
    return f"{pid}\t{','.join(map(str, np.asarray(row, dtype=np.float32).tolist()))}"


def _random(rng, n, d, scale=(0.5, 2.0)):
    return (rng.standard_normal((n, d)) * rng.uniform(*scale, (n, 1))).astype(np.float32)


def test_a_repeated_row_is_dropped_and_counted(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = _random(rng, 3, 6)
    near = rows[1] + np.float32(1e-5)  # another batch may round the padded repeat differently
    path = tmp_path / "query.feat"
    path.write_text("\n".join([_line(5, rows[0]), _line(3, rows[1]), "", _line(5, rows[0]), _line(7, rows[2]),
                               _line(3, near)]) + "\n", encoding="utf-8")
    feats, ids, repeats = read_text_features(str(path))
    assert ids == [5, 3, 7] and repeats == 2
    np.testing.assert_array_equal(feats, rows)  # the first line of each id is the one kept
    loaded, loaded_ids = load_features(str(path))
    assert loaded_ids == ids
    assert f"{path}: dropped 2 repeated lines" in capsys.readouterr().out


def test_a_repeated_id_with_other_values_names_both_lines(tmp_path):
    rows = np.eye(4, dtype=np.float32)
    path = tmp_path / "doc.feat"
    path.write_text("\n".join([_line(10, rows[0]), _line(11, rows[1]), "", _line(10, rows[2])]) + "\n",
                    encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"doc\.feat:4: item id 10 is also on line 1, with values that differ"):
        read_text_features(str(path))


@pytest.mark.parametrize("bad, expected", [
    ("9\t0.1,0.2\t0.3", r"expected 2 tab-separated fields .* got 3"),
    ("9 0.1,0.2", r"expected 2 tab-separated fields .* got 1"),
    ("item9\t0.1,0.2", r"expected item id as a non-negative decimal integer, got 'item9'"),
    ("9\t0.1,zero", r"expected comma-separated floats in field 2"),
    ("9\t0.1,", r"expected comma-separated floats in field 2"),
    ("9\t0.1,0.2,0.3", r"expected 2 values like the first line, got 3"),
    ("9\t0.1,nan", r"expected finite values in field 2"),
])
def test_a_malformed_line_names_file_line_and_what_was_expected(tmp_path, bad, expected):
    path = tmp_path / "g.feat"
    path.write_text(f"8\t0.5,0.5\n\n{bad}\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match=re.escape(f"{path}:3: ") + expected):
        read_text_features(str(path))


def test_the_format_is_told_by_contents_not_by_name(tmp_path):
    rng = np.random.default_rng(1)
    feats, ids = _random(rng, 4, 5), [4, 8, 15, 16]
    save_features(str(tmp_path / "binary.feat"), str(tmp_path / "ids.txt"), feats, ids)
    write_text_features(str(tmp_path / "text.npy"), feats, ids)
    for got, got_ids in (load_features(str(tmp_path / "binary.feat"), str(tmp_path / "ids.txt")),
                         load_features(str(tmp_path / "text.npy"))):
        assert got_ids == ids
        np.testing.assert_array_equal(got, feats)  # float32 text reads back bit for bit


def _search(tmp_path, name, query, gallery, gt, topk=100):
    out = tmp_path / name / "results.json"
    evaluation.main(["search", "--query-feats", query[0], *(["--query-ids", query[1]] if len(query) > 1 else []),
                     "--gallery-feats", gallery[0], *(["--gallery-ids", gallery[1]] if len(gallery) > 1 else []),
                     "--gt", str(gt), "--out", str(out), "--topk", str(topk)])
    return json.loads(out.read_text()), np.load(out.parent / "ranking.npz")


def _padded_shards(path, feats, ids, world_size):
    """Their evaluation's files: rank r encodes list items r, r + W, ... of the list padded with its first
    items, one file per rank, concatenated with cat."""
    n = len(ids)
    padded = list(range(n)) + list(range(-n % world_size))
    lines = [_line(ids[i], feats[i]) for r in range(world_size) for i in padded[r::world_size]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines) - n


def test_search_on_padded_authors_files_scores_as_on_the_project_files(tmp_path, capsys):
    rng = np.random.default_rng(2)
    qids = [int(i) for i in rng.choice(10**9, 30, replace=False)]
    gids = [int(i) for i in rng.choice(10**9, 250, replace=False)]
    query, gallery = _random(rng, 30, 16), _random(rng, 250, 16)
    gallery[:30] = query + 0.8 * _random(rng, 30, 16, (1, 1))  # each query's first relevant item is near it
    gt = tmp_path / "gt.txt"
    gt.write_text("".join(f"{q}\t{gids[i]},{gids[int(rng.integers(30, 250))]}\n" for i, q in enumerate(qids)),
                  encoding="utf-8")
    for name, feats, ids in (("q", query, qids), ("g", gallery, gids)):
        save_features(str(tmp_path / f"{name}.npy"), str(tmp_path / f"{name}.txt"), feats, ids)
    pad_q = _padded_shards(tmp_path / "query.feat", query, qids, 8)
    pad_g = _padded_shards(tmp_path / "doc.feat", gallery, gids, 8)
    assert (pad_q, pad_g) == (2, 6)
    ours, ours_ranking = _search(tmp_path, "ours", (str(tmp_path / "q.npy"), str(tmp_path / "q.txt")),
                                 (str(tmp_path / "g.npy"), str(tmp_path / "g.txt")), gt)
    capsys.readouterr()
    theirs, their_ranking = _search(tmp_path, "theirs", (str(tmp_path / "query.feat"),),
                                    (str(tmp_path / "doc.feat"),), gt)
    printed = capsys.readouterr().out
    assert "query.feat: dropped 2 repeated lines" in printed and "doc.feat: dropped 6 repeated lines" in printed
    assert 0 < ours["recall"]["10"] < ours["recall"]["100"] < 100
    assert theirs["recall"] == ours["recall"] and theirs["hit_rate"] == ours["hit_rate"]
    assert theirs["num_queries"] == 30 and theirs["num_gallery"] == 250
    # the shards hold the items in another order: the same ids rank in the same places all the same
    order = np.argsort(their_ranking["query_ids"])
    np.testing.assert_array_equal(their_ranking["gallery_ids"][order],
                                  ours_ranking["gallery_ids"][np.argsort(ours_ranking["query_ids"])])


def test_export_authors_reads_back_as_the_run_and_scores_the_same(tmp_path, mini_root, capsys):
    config = os.path.join(REPO_ROOT, "configs", "demo.yaml")
    overrides = [f"data.root={mini_root}", f"output_dir={tmp_path / 'run'}"]
    paths, direction = DatasetPaths.from_config(load_config(config, overrides)["data"]), "video2goods"
    run = tmp_path / "run" / "eval" / direction / "fused"
    rng = np.random.default_rng(3)
    source = {}
    for side, list_path in (("query", paths.query_list(direction)), ("gallery", paths.gallery_list(direction))):
        ids = [item.pid for item in parse_item_list(list_path)]
        feats = _random(rng, len(ids), 64)  # not unit length, stored as float16 as evaluations store them
        os.makedirs(run / side)
        save_features(str(run / side / "feats.npy"), str(run / side / "ids.txt"), feats, ids, "float16")
        source[side] = load_features(str(run / side / "feats.npy"), str(run / side / "ids.txt"))
    capsys.readouterr()
    evaluation.main(["export", "--format", "authors", "--config", config, *overrides])
    printed = capsys.readouterr().out
    out = run / "authors"
    num_gallery = len(source["gallery"][1])
    assert f"1-convert_feat.py {out / 'query.feat'} {out / 'doc.feat'} 64 " in printed
    assert f"3-search.py {out / 'index'} {min(1000, num_gallery)}\n" in printed

    for side, name in (("query", "query.feat"), ("gallery", "doc.feat")):
        feats, ids, repeats = read_text_features(str(out / name))
        want, want_ids = source[side]
        assert ids == want_ids and repeats == 0
        np.testing.assert_array_equal(feats, normalize(want))  # the very rows the project's search ranks with
        unit = want.astype(np.float64) / np.linalg.norm(want.astype(np.float64), axis=1, keepdims=True)
        np.testing.assert_allclose(feats, unit, atol=1e-6)

    original_gt = paths.gt_file(direction)
    assert any("/" in line for line in open(original_gt, encoding="utf-8"))  # the mini set writes some ids as paths
    exported = (out / "gt.txt").read_text(encoding="utf-8").splitlines()
    assert all(re.fullmatch(r"\d+\t\d+(,\d+)*", line) for line in exported)  # their analysis compares ids as text
    assert parse_gt(str(out / "gt.txt")) == parse_gt(original_gt)

    ours, _ = _search(tmp_path, "ours", (str(run / "query" / "feats.npy"), str(run / "query" / "ids.txt")),
                      (str(run / "gallery" / "feats.npy"), str(run / "gallery" / "ids.txt")), original_gt)
    theirs, _ = _search(tmp_path, "theirs", (str(out / "query.feat"),), (str(out / "doc.feat"),), out / "gt.txt")
    assert theirs["recall"] == ours["recall"] and theirs["hit_rate"] == ours["hit_rate"]


def test_export_without_features_says_which_file_and_what_to_run(tmp_path, mini_root):
    config = os.path.join(REPO_ROOT, "configs", "demo.yaml")
    expected = r"query[/\\]feats\.npy: no features of this run; run `evaluation\.py extract`"
    with pytest.raises(FileNotFoundError, match=expected):
        evaluation.main(["export", "--format", "authors", "--config", config, f"data.root={mini_root}",
                         f"output_dir={tmp_path}"])
