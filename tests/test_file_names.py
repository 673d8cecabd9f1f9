"""The list files are found through data.train_file and data.test_files, the item folders through
data.roots: a dataset that keeps the authors' file names, or whose folders sit elsewhere, reads the
same as one in the default layout, and a wrong name is an error naming the config key and the full path."""
import os
import shutil

import pytest
import torch
import yaml

from datasets import build_train_loader
from datasets.annotations import (DIRECTIONS, GALLERY_DOMAIN, QUERY_DOMAIN, DatasetPaths, parse_gt, parse_item_list,
                                  parse_train_file)
from datasets.validate import main as validate_main
from datasets.validate import validate
from utils.config import SCHEMA_PATH, load_config

# the names of the authors' scripts (scripts/*.sh, benchmark/evaluate/*/run.sh, evaluate/i2i/index/run.sh)
AUTHORS_NAMES = {
    "data.train_file": "train_file/new_train_98000.txt",
    "data.test_files.video2goods.query": "test_file/photo_query.txt",
    "data.test_files.video2goods.gallery": "test_file/all_goods_177839.txt",
    "data.test_files.video2goods.gt": "eval_gt.txt",
    "data.test_files.goods2video.query": "test_file/new_goods2video_goods.txt",
    "data.test_files.goods2video.gallery": "test_file/all_videos.txt",
    "data.test_files.goods2video.gt": "gt_file/new_goods2video_gt.txt",
}


def default_path(paths, key):
    if key == "data.train_file":
        return paths.train_file
    _, _, direction, kind = key.split(".")
    return dict(zip(("query", "gallery", "gt"), paths.direction_files(direction)))[kind]


@pytest.fixture(scope="module")
def authors_root(mini_root, tmp_path_factory):
    """The mini dataset with its list files under the authors' names (and none under the default ones)."""
    root = tmp_path_factory.mktemp("authors_names")
    os.symlink(os.path.join(mini_root, "Real400K"), root / "Real400K")
    default = DatasetPaths(mini_root)
    for key, name in AUTHORS_NAMES.items():
        os.makedirs(os.path.dirname(root / name), exist_ok=True)
        shutil.copyfile(default_path(default, key), root / name)
    return str(root)


def authors_cfg(root, *overrides):
    return load_config(SCHEMA_PATH, [f"data.root={root}", *(f"{k}={v}" for k, v in AUTHORS_NAMES.items()),
                                     *overrides])


def test_default_names_come_from_the_schema():
    data = load_config(SCHEMA_PATH)["data"]
    paths = DatasetPaths("/r")
    assert paths.train_file == os.path.join("/r", data["train_file"])
    for d in DIRECTIONS:
        files = data["test_files"][d]
        assert paths.direction_files(d) == tuple(os.path.join("/r", files[k]) for k in ("query", "gallery", "gt"))
        assert (paths.query_list(d), paths.gallery_list(d), paths.gt_file(d)) == paths.direction_files(d)


def test_overriding_one_list_keeps_the_others():
    base = load_config(SCHEMA_PATH)["data"]["test_files"]
    files = load_config(SCHEMA_PATH, ["data.test_files.video2goods.gt=eval_gt.txt"])["data"]["test_files"]
    assert files["video2goods"] == {**base["video2goods"], "gt": "eval_gt.txt"}
    assert files["goods2video"] == base["goods2video"]
    cfg = load_config(SCHEMA_PATH, ["data.root=/r", "data.test_files.video2goods.gt=x/g.txt"])
    paths = DatasetPaths.from_config(cfg["data"])
    assert paths.gt_file("video2goods") == "/r/x/g.txt"
    assert paths.query_list("video2goods") == "/r/test_file/video2goods_query.txt"


def test_authors_names_read_the_same_annotations(mini_root, authors_root):
    default = DatasetPaths(mini_root)
    authors = DatasetPaths.from_config(authors_cfg(authors_root)["data"])
    assert not os.path.exists(default_path(DatasetPaths(authors_root), "data.train_file"))
    assert authors.train_file == os.path.join(authors_root, "train_file", "new_train_98000.txt")
    assert authors.gt_file("goods2video") == os.path.join(authors_root, "gt_file", "new_goods2video_gt.txt")
    assert parse_train_file(authors.train_file) == parse_train_file(default.train_file)
    for d in DIRECTIONS:
        assert parse_item_list(authors.query_list(d)) == parse_item_list(default.query_list(d))
        assert parse_item_list(authors.gallery_list(d)) == parse_item_list(default.gallery_list(d))
        assert parse_gt(authors.gt_file(d)) == parse_gt(default.gt_file(d))


def test_train_loader_and_eval_lists_follow_the_config(mini_root, authors_root):
    from datasets import build_eval_dataset

    cfg = authors_cfg(authors_root, "data.num_workers=0", "train.batch_size=4")
    loader, _ = build_train_loader(cfg, 0, 1)
    assert list(loader.dataset.entries) == parse_train_file(DatasetPaths(mini_root).train_file)
    paths = DatasetPaths.from_config(cfg["data"])
    query = build_eval_dataset(cfg, paths.query_list("goods2video"), "goods")
    assert [i.pid for i in query.items] == [i.pid for i in parse_item_list(
        DatasetPaths(mini_root).query_list("goods2video"))]


def test_validator_follows_the_config(authors_root, tmp_path):
    assert not validate(authors_root).ok  # the default names are absent
    files = authors_cfg(authors_root)["data"]
    report = validate(authors_root, train_file=files["train_file"], test_files=files["test_files"])
    assert report.ok, report.format()
    config = tmp_path / "authors.yaml"
    data = {"root": authors_root}
    for key, name in AUTHORS_NAMES.items():  # the dotted keys as nested YAML mappings
        *parents, leaf = key.split(".")[1:]
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = name
    config.write_text(yaml.safe_dump({"_base_": SCHEMA_PATH, "data": data}))
    assert validate_main(["--config", str(config), "--max-items", "3"]) == 0


@pytest.mark.parametrize("key", ["data.train_file", "data.test_files.goods2video.gt"])
def test_a_wrong_name_names_the_key_and_the_full_path(authors_root, key):
    cfg = authors_cfg(authors_root, f"{key}=lists/wrong.txt", "data.num_workers=0", "eval.direction=goods2video")
    missing = os.path.join(authors_root, "lists", "wrong.txt")
    if key == "data.train_file":
        with pytest.raises(FileNotFoundError) as err:
            build_train_loader(cfg, 0, 1)
    else:
        from evaluate.pipeline import search_direction

        with pytest.raises(FileNotFoundError) as err:
            search_direction(cfg)
    assert missing in str(err.value) and key in str(err.value)
    report = validate(authors_root, train_file=cfg["data"]["train_file"], test_files=cfg["data"]["test_files"])
    assert f"expected {missing} (set by {key})" in report.problems["error"]["missing list file"]


@pytest.fixture(scope="module")
def moved_root(mini_root, tmp_path_factory):
    """(data.root, data.roots) of a copy of the mini dataset whose item folders were moved, not copied, away
    from their default places: two to absolute folders outside data.root, two renamed inside the dataset folder."""
    base = tmp_path_factory.mktemp("moved_folders")
    root = base / "data"
    shutil.copytree(mini_root, root)
    roots = {"frameid": str(base / "elsewhere" / "frame_lists"), "goods_texts": str(base / "elsewhere" / "titles"),
             "video_images": "frames", "video_texts": "texts/video"}
    default, moved = DatasetPaths(root), DatasetPaths(root, roots=roots)
    for key in roots:
        os.makedirs(os.path.dirname(moved.roots[key]), exist_ok=True)
        shutil.move(default.roots[key], moved.roots[key])
    return str(root), roots


def roots_cfg(root, roots, *overrides):
    return load_config(SCHEMA_PATH, [f"data.root={root}", *(f"data.roots.{k}={v}" for k, v in roots.items()),
                                     "data.num_workers=0", "data.image_size=32", "data.num_frames=3",
                                     "train.batch_size=4", *overrides])


def same_batches(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_dataset_paths_place_each_item_folder_by_its_key():
    p = DatasetPaths("/data", "Real20M", roots={"frameid": "/lists/frames", "video_texts": "~/vt",
                                               "goods_images": None})
    assert p.frameid_path(50001) == "/lists/frames/1/50001.txt"
    assert p.text_path("photo", 7) == os.path.join(os.path.expanduser("~"), "vt", "7", "7.txt")
    assert p.image_path(7) == "/data/Real20M/goods/images/7/7.jpg"  # None and absent keys keep the default
    assert p.text_path("goods", 7) == "/data/Real20M/goods/text/7/7.txt"
    assert p.images_dir("video") == "/data/Real20M/video/images"
    cfg = load_config(SCHEMA_PATH, ["data.root=/r", "data.roots.video_images=/frames", "data.roots.raw_videos=mp4"])
    q = DatasetPaths.from_config(cfg["data"])
    assert (q.images_dir("video"), q.raw_video_path(3)) == ("/frames", "/r/Real400K/mp4/3/3.mp4")
    with pytest.raises(ValueError, match="unknown data.roots key.*photo_images: expected goods_images"):
        DatasetPaths("/data", roots={"photo_images": "x"})


def test_training_and_pretraining_read_the_moved_folders(mini_root, moved_root):
    from datasets import build_pretrain_loader

    moved, default = roots_cfg(*moved_root), roots_cfg(mini_root, {})
    assert not os.path.exists(DatasetPaths(moved_root[0]).roots["frameid"])  # the default places are empty
    for build in (build_train_loader, build_pretrain_loader):
        (moved_loader, _), (default_loader, _) = build(moved, 0, 1), build(default, 0, 1)
        batches = list(moved_loader)
        assert {b["domain"] for b in batches} == {"goods", "video"}
        for a, b in zip(batches, default_loader, strict=True):
            same_batches(a, b)
        stats = moved_loader.dataset.raw_counts()
        assert stats == default_loader.dataset.raw_counts()
        assert stats["unreadable_images"] == stats["unreadable_texts"] == 0


def test_evaluation_the_page_and_the_validator_read_the_moved_folders(mini_root, moved_root, tmp_path):
    from datasets import build_eval_dataset
    from evaluate.page import dataset_items

    root, roots = moved_root
    moved, default = roots_cfg(root, roots), roots_cfg(mini_root, {})
    paths = DatasetPaths.from_config(moved["data"])
    for direction in DIRECTIONS:
        for list_path, domain in ((paths.query_list(direction), QUERY_DOMAIN[direction]),
                                  (paths.gallery_list(direction), GALLERY_DOMAIN[direction])):
            a = build_eval_dataset(moved, list_path, domain)
            b = build_eval_dataset(default, list_path.replace(root, mini_root), domain)
            for i in range(3):
                same_batches(a[i], b[i])
            assert a.stats() == b.stats()
    describe = dataset_items(paths, paths.query_list("video2goods"))
    shown = describe(parse_item_list(paths.query_list("video2goods"))[0].pid)
    assert shown["title"] != "(text file missing)"
    assert shown["images"] and all(p.startswith(os.path.join(root, "Real400K", "frames")) and os.path.isfile(p)
                                   for p in shown["images"])
    assert "data.roots.frameid" in "\n".join(validate(root).problems["error"]["missing from layout"])
    report = validate(root, roots=roots)
    assert report.ok, report.format()
    config = tmp_path / "moved.yaml"
    config.write_text(yaml.safe_dump({"_base_": SCHEMA_PATH, "data": {"root": root, "roots": roots}}))
    assert validate_main(["--config", str(config), "--max-items", "3"]) == 0


def test_one_folder_for_both_domains_as_in_the_authors_scripts(mini_root, tmp_path):
    """Their scripts give one images folder and one texts folder to both domains: the validator scans the
    shared texts folder once and leaves the name check of the images folder, which holds frames, to the items."""
    root = tmp_path / "shared"
    shutil.copytree(mini_root, root, ignore=lambda d, names: ["Real400K"] if d == mini_root else [])
    default = DatasetPaths(mini_root)
    roots = {"goods_images": str(tmp_path / "images"), "video_images": str(tmp_path / "images"),
             "goods_texts": str(tmp_path / "texts"), "video_texts": str(tmp_path / "texts"),
             "frameid": default.roots["frameid"], "raw_videos": default.roots["raw_videos"]}
    for key in ("goods_images", "video_images", "goods_texts", "video_texts"):
        shutil.copytree(default.roots[key], roots[key], dirs_exist_ok=True)
    texts = sum(len(files) for key in ("goods_texts", "video_texts") for _, _, files in os.walk(default.roots[key]))
    report = validate(root, roots=roots)
    assert report.ok, report.format()
    assert report.counts["goods_texts and video_texts files scanned"] == texts
    assert report.problems["warning"]["shard folder scan skipped"] == [
        f"{roots['goods_images']}: data.roots.goods_images is also data.roots.video_images, whose frames may have "
        "any name"]
    loader, _ = build_train_loader(roots_cfg(root, roots), 0, 1)
    assert [b["pids"].tolist() for b in loader] == [b["pids"].tolist() for b in build_train_loader(
        roots_cfg(mini_root, {}), 0, 1)[0]]
    assert loader.dataset.raw_counts()["unreadable_images"] == loader.dataset.raw_counts()["unreadable_texts"] == 0
