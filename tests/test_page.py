"""The retrieval page of a mini-dataset search, rendered by a real headless chromium."""
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from datasets.annotations import DatasetPaths, parse_gt, parse_item_list
from evaluate import pipeline
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
    pipeline.search_and_score(str(out / "q.npy"), str(out / "q.txt"), str(out / "g.npy"), str(out / "g.txt"),
                              paths.gt_file("video2goods"), str(out / "results.json"))
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


def _borders(mask):
    """[(y, x0, x1)] of the horizontal runs of the mask wider than any thumbnail: box borders."""
    runs = []
    for y, line in enumerate(mask):
        edges = np.diff(np.concatenate([[0], line.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        runs += [(y, int(a), int(b)) for a, b in zip(starts, ends) if b - a >= 150]
    return runs


def _screenshot(page, tmp_path, width, height):
    """The page in a headless chromium window of width x height, as an (height, width, 3) int array."""
    png = tmp_path / f"page{width}.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={png}",
                    f"--window-size={width},{height}", "file://" + os.path.abspath(page)],
                   check=True, timeout=120, capture_output=True)
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def _mask(image, name):
    color = np.array([int(COLORS[name][i:i + 2], 16) for i in (1, 3, 5)])
    return (np.abs(image - color) <= 12).all(-1)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_page_renders_in_headless_chromium(mini_root, tmp_path):
    page, _ = _page(mini_root, tmp_path)
    image = _screenshot(page, tmp_path, 1200, 700)
    assert image.shape[:2] == (700, 1200)
    assert image.std() > 20  # not a blank page
    for name in ("query", "gt", "other"):
        assert _borders(_mask(image, name)), f"no {name} box border in the screenshot"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_rows_wrap_in_a_narrow_window(mini_root, tmp_path):
    """5 boxes of 226 px a row do not fit 600 px: they wrap, none is cut at the right edge, the query stays first."""
    page, _ = _page(mini_root, tmp_path)
    image = _screenshot(page, tmp_path, 600, 1400)
    boxes = _mask(image, "query") | _mask(image, "gt") | _mask(image, "other")
    assert boxes.any() and not boxes[:, -40:].any()  # no box runs off the right edge (or under the scrollbar)
    borders = sorted((y, x0, name) for name in COLORS for y, x0, _ in _borders(_mask(image, name)))
    assert borders[0][2] == "query"  # top left border: the first row of boxes begins with its query


def test_page_shows_the_runs_recall_and_where_each_query_finds_its_first_correct_item(mini_root, tmp_path):
    import json

    page, _ = _page(mini_root, tmp_path)
    text = open(page, encoding="utf-8").read()
    results = json.loads((tmp_path / "results.json").read_text())
    assert text.index(f"R@1 {results['recall']['1']:.2f}  R@5 {results['recall']['5']:.2f}") < text.index('class="row"')
    assert f"{results['num_queries']} queries" in text
    assert text.count("first correct item at rank 1</div>") == 3  # the planted copies rank first
    assert "flex-wrap: wrap" in text.split(".row {")[1].split("}")[0]  # rows wrap to the window


def test_make_page_heads_the_page_with_the_runs_recall(mini_root, tmp_path):
    """pipeline.make_page reads results.json from the folder of ranking.npz."""
    import json

    from tests.helpers import REPO_ROOT
    from utils.config import load_config

    cfg = load_config(os.path.join(REPO_ROOT, "configs", "demo.yaml"), [f"data.root={mini_root}", f"output_dir={tmp_path}", "eval.feature=fused",
                                            "eval.page_queries=2", "eval.page_topk=3"])
    d = tmp_path / pipeline.out_dir(cfg, "fused")  # an absolute path under tmp_path
    d.mkdir(parents=True)
    _search_mini(mini_root, d)
    text = open(pipeline.make_page(cfg), encoding="utf-8").read()
    recall = json.loads((d / "results.json").read_text())["recall"]
    assert text.count('class="row"') == 2 and f"R@1 {recall['1']:.2f}  R@5 {recall['5']:.2f}" in text


def test_first_correct_rank_reads_the_whole_list_and_never_a_missing_neighbour():
    from evaluate.page import first_correct

    assert first_correct([5, 8, 3, 9], {3, 9}) == "first correct item at rank 3"
    assert first_correct([5, -1, 3], {3}) == "first correct item at rank 2"
    assert first_correct([5, 8, -1, -1], {7}) == "no correct item in the top 2"
    assert first_correct([5, 8], {7}, no_relevant_in_gallery=True) == "no relevant item in the gallery"
