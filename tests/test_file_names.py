"""The list files are found through data.train_file and data.test_files: a dataset that keeps the
authors' file names reads the same as one with the default names, and a wrong name is an error
naming the config key and the full path."""
import os
import shutil

import pytest
import yaml

from datasets.annotations import DIRECTIONS, DatasetPaths, parse_gt, parse_item_list, parse_train_file
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
    from datasets import build_eval_dataset, build_train_loader
    from evaluation import data_paths

    cfg = authors_cfg(authors_root, "data.num_workers=0", "train.batch_size=4")
    loader, _ = build_train_loader(cfg, 0, 1)
    assert list(loader.dataset.entries) == parse_train_file(DatasetPaths(mini_root).train_file)
    paths = data_paths(cfg)
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
        from datasets import build_train_loader
        with pytest.raises(FileNotFoundError) as err:
            build_train_loader(cfg, 0, 1)
    else:
        from evaluation import search_direction
        with pytest.raises(FileNotFoundError) as err:
            search_direction(cfg)
    assert missing in str(err.value) and key in str(err.value)
    report = validate(authors_root, train_file=cfg["data"]["train_file"], test_files=cfg["data"]["test_files"])
    assert f"expected {missing} (set by {key})" in report.problems["error"]["missing list file"]
