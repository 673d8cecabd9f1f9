"""The mini dataset generator: format (through the validator), determinism, sizes, raw videos, signal;
and the validator catching planted violations."""
import hashlib
import os
import re
import shutil

import numpy as np
from PIL import Image

from datasets.annotations import (DIRECTIONS, DatasetPaths, iter_lines, parse_gt, parse_item_list, parse_train_file,
                                  read_frame_ids, read_goods_text, read_video_text)
from datasets.validate import main as validate_main
from datasets.validate import validate
from scripts.make_mini_dataset import CATEGORIES, COLOURS, generate, render_goods
from tests.helpers import MINI_SIZES

CJK = re.compile(r"[\u4e00-\u9fff]")


def tree_hash(root):
    """sha256 of every file's path and bytes, but the training-index cache that training writes beside the list."""
    from datasets.train_index import CACHE_DIR_NAME

    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != CACHE_DIR_NAME)
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_generated_dataset_passes_the_validator(mini_root):
    report = validate(mini_root, decode_images=True)
    assert report.ok, report.format()
    # the only warnings are the deliberately truncated goods texts
    assert set(report.totals["warning"]) <= {"goods text with 6 lines expected"}
    c = report.counts
    assert c["train lines"] == MINI_SIZES["num_queries"]
    for d in DIRECTIONS:
        assert c[f"{d} queries"] == c[f"{d} gt queries"] == MINI_SIZES["num_test_queries"]
        assert c[f"{d} gallery"] == MINI_SIZES["gallery_size"]
        assert c[f"{d} relevant pairs"] >= MINI_SIZES["num_test_queries"]
    assert validate_main([mini_root]) == 0


def _line_of(path, predicate):
    with open(path, encoding="utf-8") as f:
        return next(i for i, line in enumerate(f, 1) if predicate(line))


def test_validator_catches_planted_violations(mini_root, tmp_path, capsys):
    root = str(tmp_path / "broken")
    shutil.copytree(mini_root, root)
    p = DatasetPaths(root)
    entries = parse_train_file(p.train_file)
    # 1. a goods image referenced by train.txt is missing
    goods_line = next(i for i, e in enumerate(entries, 1) if e.goods)
    os.remove(p.image_path(entries[goods_line - 1].goods[0]))
    # 2. a train line with two fields
    with open(p.train_file, "a", encoding="utf-8") as f:
        f.write("坏的一行\t123\n")
    bad_train_line = len(entries) + 1
    # 3. a video2goods query item labelled goods
    query_list = p.query_list("video2goods")
    with open(query_list, encoding="utf-8") as f:
        lines = f.read().split("\n")
    lines[1] = lines[1].replace("\tphoto\t", "\tgoods\t", 1).split("\t")
    lines[1][3] = lines[1][3].split(",")[0]
    lines[1] = "\t".join(lines[1])
    with open(query_list, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    # 4. a gt line whose query is in no query list
    with open(p.gt_file("goods2video"), "a", encoding="utf-8") as f:
        f.write("999\t1\n")
    # 5. a text file in the wrong shard folder
    gallery = parse_item_list(p.gallery_list("video2goods"))
    moved = gallery[0].pid
    os.makedirs(os.path.join(p.text_dir("goods"), "7"), exist_ok=True)
    os.replace(p.text_path("goods", moved), os.path.join(p.text_dir("goods"), "7", f"{moved}.txt"))
    # 6. a corrupt frame of a gallery video and 7. a missing frameid file of a training video
    videos = parse_item_list(p.gallery_list("goods2video"))
    with open(os.path.join(p.images_dir("video"), videos[0].frames[0]), "wb") as f:
        f.write(b"not a jpeg")
    train_video = next(e.videos[0] for e in entries if e.videos)
    os.remove(p.frameid_path(train_video))

    report = validate(root, decode_images=True)
    assert not report.ok
    found = {kind: "\n".join(report.problems["error"][kind]) for kind in report.totals["error"]}
    assert f"train.txt:{goods_line}: expected image" in found["missing image"]
    assert f"train.txt:{bad_train_line}: expected 3 or 4 tab-separated fields" in found["bad train line"]
    assert "video2goods_query.txt:2: expected domain video, got goods" in found["wrong domain"]
    gt_line = _line_of(p.gt_file("goods2video"), lambda line: line.startswith("999\t"))
    assert f"goods2video_gt.txt:{gt_line}: expected query 999" in found["gt query not in the query list"]
    assert f"{moved}.txt: expected <pid>.txt with pid % 50000 == 7" in found["not in the pid % 50000 layout"]
    assert f"expected text file {p.text_path('goods', moved)}" in found["missing goods text"]
    assert videos[0].frames[0] in found["unreadable image"]
    assert p.frameid_path(train_video) in found["missing frameid file"]
    assert set(found) == {"missing image", "bad train line", "wrong domain", "gt query not in the query list",
                          "not in the pid % 50000 layout", "missing goods text", "unreadable image",
                          "missing frameid file"}
    assert validate_main([root]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_validator_follows_the_recall_rule_for_gt_lines(mini_root, tmp_path):
    """A query without a gt line cannot be scored (an error); one whose relevant items are all absent
    from the gallery scores 0 (a warning)."""
    root = tmp_path / "gt"
    shutil.copytree(mini_root, root, ignore=lambda d, names: ["Real400K"] if d == mini_root else [])
    os.symlink(os.path.join(mini_root, "Real400K"), root / "Real400K")  # the lists alone are edited
    gt = DatasetPaths(root).gt_file("video2goods")
    with open(gt, encoding="utf-8") as f:
        lines = f.read().splitlines()
    before = parse_gt(gt)
    lines = lines[1:]  # drop the first query's line, point the next one at pids of no gallery item
    lines[0] = lines[0].split("\t")[0] + "\t1,2"
    with open(gt, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    (dropped,) = set(before) - set(parse_gt(gt))
    report = validate(root, max_items=3)
    assert set(report.totals["error"]) == {"query without gt line"}
    assert f"query {dropped} has no line in {gt}" in report.problems["error"]["query without gt line"][0]
    assert report.problems["warning"]["gt query without any relevant item in the gallery"] == [
        f"{gt}:1: query {next(iter(parse_gt(gt)))} will score 0 at every K"]


def test_validator_max_items_samples_the_file_checks(mini_root):
    full = validate(mini_root).counts
    sampled = validate(mini_root, max_items=5).counts
    assert full["goods_images files scanned"] > 20
    assert 5 <= sampled["goods_images files scanned"] < full["goods_images files scanned"]


def test_generation_is_deterministic(mini_root, tmp_path):
    generate(tmp_path / "same", seed=0, **MINI_SIZES)
    generate(tmp_path / "other", seed=1, **MINI_SIZES)
    assert tree_hash(tmp_path / "same") == tree_hash(mini_root)
    assert tree_hash(tmp_path / "other") != tree_hash(mini_root)


def test_default_size_meets_the_minimums(tmp_path):
    paths = generate(tmp_path / "default")  # about 5 s on one core
    c = validate(paths.root, max_items=30).counts
    assert c["train lines"] >= 300
    for d in DIRECTIONS:
        assert c[f"{d} queries"] >= 100 and c[f"{d} gallery"] >= 1000
    goods = parse_item_list(paths.gallery_list("video2goods"))[0]
    assert Image.open(os.path.join(paths.images_dir("goods"), goods.frames[0])).size == (64, 64)


def test_raw_videos_decode_to_their_frames(mini_root):
    import decord

    p = DatasetPaths(mini_root)
    raw_dir = p.roots["raw_videos"]
    videos = [int(os.path.splitext(f)[0]) for _, _, files in os.walk(raw_dir) for f in files]
    assert len(videos) == MINI_SIZES["num_raw_videos"]
    for pid in videos:
        frames = read_frame_ids(p.frameid_path(pid))
        reader = decord.VideoReader(p.raw_video_path(pid))
        assert len(reader) == len(frames)
        decoded = reader.get_batch(list(range(len(frames)))).asnumpy().astype(np.float32)
        jpegs = np.stack([np.asarray(Image.open(os.path.join(p.images_dir("video"), f)), np.float32) for f in frames])
        assert np.abs(decoded - jpegs).mean() < 20  # the same pictures, up to two lossy codecs


def test_texts_are_chinese_noisy_and_use_the_format_options(mini_root):
    p = DatasetPaths(mini_root)
    queries = [line.strip() for _, line in iter_lines(p.queries)]
    assert len(queries) == MINI_SIZES["num_queries"] + 2 * MINI_SIZES["num_test_queries"]
    assert all(CJK.search(q) for q in queries)
    video_texts = [read_video_text(p.text_path("video", item.pid)) for item in parse_item_list(p.gallery_list("goods2video"))]
    assert any(None in t.values() for t in video_texts) and any(None not in t.values() for t in video_texts)
    for video_list in (p.gallery_list("goods2video"), p.query_list("video2goods")):  # the authors' domain name
        with open(video_list, encoding="utf-8") as f:
            assert all(line.split("\t")[1] == "photo" for line in f)
    gt_lines = [line for d in DIRECTIONS for line in open(p.gt_file(d), encoding="utf-8")]
    assert any("/" in line for line in gt_lines) and any("/" not in line for line in gt_lines)
    assert sum(len(v) for v in parse_gt(p.gt_file("video2goods")).values()) >= MINI_SIZES["num_test_queries"]


def test_titles_name_the_query_category_only_sometimes(mini_root):
    """Text signal is real but incomplete: when a query names a category, its goods titles often but not
    always name it (by any synonym), and titles of other queries' goods rarely do."""
    p = DatasetPaths(mini_root)
    own, other = [], []
    entries = parse_train_file(p.train_file)
    titles = {pid: read_goods_text(p.text_path("goods", pid))["title"] for e in entries for pid in e.goods}
    for e in entries:
        named = [words for _, words, _ in CATEGORIES if any(w in e.query for w in words)]
        if len(named) != 1:
            continue
        for pid, title in titles.items():
            (own if pid in e.goods else other).append(any(w in title for w in named[0]))
    assert 0.4 < np.mean(own) < 0.95
    assert np.mean(other) < 0.3


def test_goods_image_shows_the_concept_colour():
    import random

    def share_near(img, rgb):
        arr = np.asarray(img, np.float32)
        return (np.abs(arr - np.array(rgb, np.float32)).max(-1) < 45).mean()

    red, blue = COLOURS[0][0], COLOURS[4][0]
    for seed in range(5):
        img = render_goods((0, 0, 0, 0), random.Random(seed), 64)  # a plain red circle
        assert share_near(img, red) > 0.1 and share_near(img, blue) < 0.01


def test_entities_go_coarse_to_fine_along_the_hidden_concept(mini_root):
    from datasets.annotations import read_entities
    from scripts.make_mini_dataset import TRUTH_FILE

    paths = DatasetPaths(mini_root)
    level1, level2, level3 = (read_entities(paths.entities_file(k)) for k in (1, 2, 3))
    assert (len(level1), len(level2), len(level3)) == (4, len(CATEGORIES), len(CATEGORIES) * len(COLOURS))
    with open(os.path.join(paths.entities_dir, TRUTH_FILE), encoding="utf-8") as f:
        truth = {(d, int(p)): e for d, p, e in (line.rstrip("\n").split("\t") for line in f)}
    train = parse_train_file(paths.train_file)
    items = {("goods", p) for q in train for p in q.goods} | {("video", p) for q in train for p in q.videos}
    assert items <= set(truth)
    for (domain, pid), entity in truth.items():
        assert entity in level3
        # a level-3 entity is a colour word and the level-2 category of the item, which its goods text names
        category = next(c for c in level2 if entity.endswith(c))
        assert entity[:-len(category)] in {words[0] for _, words in COLOURS}
        if domain == "goods" and ("goods", pid) in items:
            named = read_goods_text(paths.text_path("goods", pid))["entity"]
            assert named in (category, "")  # "": one of the texts cut short on purpose
