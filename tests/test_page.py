"""The retrieval page of a mini-dataset search, rendered by a real headless chromium."""
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

import evaluation
from datasets.annotations import DatasetPaths, parse_gt, parse_item_list
from evaluate.features import save_features
from evaluate.page import COLORS, build_page, dataset_items

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _search_mini(root, out):
    """Random features where each query's first relevant item copies the query feature: rank 1 is ground truth."""
    paths = DatasetPaths(root)
    queries = [i.pid for i in parse_item_list(paths.query_list("video2goods"))]
    gallery = [i.pid for i in parse_item_list(paths.gallery_list("video2goods"))]
    gt = parse_gt(paths.gt_file("video2goods"))
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((len(queries), 16)), rng.standard_normal((len(gallery), 16))
    row = {pid: r for r, pid in enumerate(gallery)}
    for i, qid in enumerate(queries):
        g[row[gt[qid][0]]] = q[i]
    save_features(str(out / "q.npy"), str(out / "q.txt"), q, queries)
    save_features(str(out / "g.npy"), str(out / "g.txt"), g, gallery)
    evaluation.search_and_score(str(out / "q.npy"), str(out / "q.txt"), str(out / "g.npy"), str(out / "g.txt"),
                                paths.gt_file("video2goods"), str(out / "results.json"), [1, 5])
    return paths, gt


def _page(mini_root, tmp_path):
    import json

    paths, gt = _search_mini(mini_root, tmp_path)
    page = build_page(str(tmp_path / "ranking.npz"), paths.gt_file("video2goods"),
                      dataset_items(paths, paths.query_list("video2goods")),
                      dataset_items(paths, paths.gallery_list("video2goods")),
                      str(tmp_path / "page.html"), num_queries=3, topk=4, seed=0, title="video2goods test",
                      results=json.loads((tmp_path / "results.json").read_text()))
    return page, gt


def test_page_is_self_contained_and_marks_ground_truth(mini_root, tmp_path):
    page, gt = _page(mini_root, tmp_path)
    text = open(page, encoding="utf-8").read()
    assert text.count('class="row"') == 3
    assert text.count('class="item query"') == 3 and text.count("#1 ") == 3
    assert text.count('class="item gt"') >= 3  # rank 1 of every query is its ground truth
    assert text.count('class="item other"') >= 1
    # every thumbnail is embedded: 3 frames per video query, 1 image per product, no file references
    assert text.count("data:image/jpeg;base64,") == 3 * 3 + 3 * 4
    assert 'class="missing"' not in text and "src=\"/" not in text


def _longest_run(mask):
    best = 0
    for line in mask:
        edges = np.diff(np.concatenate([[0], line.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        best = max(best, int((ends - starts).max(initial=0)))
    return best


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_page_renders_in_headless_chromium(mini_root, tmp_path):
    page, _ = _page(mini_root, tmp_path)
    png = tmp_path / "page.png"
    profile = tmp_path / "chromium-profile"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1200,700",
                    "file://" + os.path.abspath(page)], check=True, timeout=120, capture_output=True)
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert image.shape[:2] == (700, 1200)
    assert image.std() > 20  # not a blank page
    for name in ("query", "gt", "other"):
        color = np.array([int(COLORS[name][i:i + 2], 16) for i in (1, 3, 5)])
        mask = (np.abs(image - color) <= 12).all(-1)
        # a box border is a straight run of its colour wider than any thumbnail
        assert _longest_run(mask) >= 150, f"no {name} box border in the screenshot"


def test_page_shows_the_runs_recall_and_where_each_query_finds_its_first_correct_item(mini_root, tmp_path):
    import json

    page, _ = _page(mini_root, tmp_path)
    text = open(page, encoding="utf-8").read()
    results = json.loads((tmp_path / "results.json").read_text())
    assert text.index(f"R@1 {results['recall']['1']:.2f}  R@5 {results['recall']['5']:.2f}") < text.index('class="row"')
    assert f"{results['num_queries']} queries" in text
    assert text.count("first correct item at rank 1</div>") == 3  # the planted copies rank first
    assert "flex-wrap: wrap" in text.split(".row {")[1].split("}")[0]  # rows wrap to the window


def test_first_correct_rank_reads_the_whole_list_and_never_a_missing_neighbour():
    from evaluate.page import first_correct

    assert first_correct([5, 8, 3, 9], {3, 9}) == "first correct item at rank 3"
    assert first_correct([5, -1, 3], {3}) == "first correct item at rank 2"
    assert first_correct([5, 8, -1, -1], {7}) == "no correct item in the top 2"
    assert first_correct([5, 8], {7}, no_relevant_in_gallery=True) == "no relevant item in the gallery"
