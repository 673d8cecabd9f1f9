"""Inputs that would fail far from their cause, caught early: empty list files (by the evaluation
dataset and the validator) and image files that are empty or not images (by the validator's
first-bytes check, with or without --decode-images)."""
import os
import shutil

import pytest
from PIL import Image

from datasets import build_eval_dataset
from datasets.annotations import (DIRECTIONS, GALLERY_DOMAIN, LIST_KINDS, QUERY_DOMAIN, AnnotationError, DatasetPaths,
                                  parse_item_list, parse_train_file, read_frame_ids)
from datasets.validate import main as validate_main
from datasets.validate import validate
from utils.config import load_config

BASE_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "base.yaml")
EMPTY_TEXTS = pytest.mark.parametrize("text", ["", "\n  \n\r\n"], ids=["zero lines", "blank lines"])


def lists_copy(mini_root, tmp_path):
    """Paths of a copy of the mini dataset's list files; the item folders are the mini dataset's (a symlink)."""
    root = tmp_path / "lists"
    shutil.copytree(mini_root, root, ignore=lambda d, names: ["Real400K"] if d == mini_root else [])
    os.symlink(os.path.join(mini_root, "Real400K"), root / "Real400K")
    return DatasetPaths(root)


def overwrite(path, data):
    with open(path, "wb") as f:
        f.write(data)


@EMPTY_TEXTS
@pytest.mark.parametrize("direction, kind", [(d, k) for d in DIRECTIONS for k in ("query", "gallery")])
def test_evaluation_dataset_refuses_an_empty_list(mini_root, tmp_path, direction, kind, text):
    paths = lists_copy(mini_root, tmp_path)
    path = paths.direction_files(direction)[LIST_KINDS.index(kind)]
    overwrite(path, text.encode())
    cfg = load_config(BASE_CONFIG, [f"data.root={paths.root}"])
    domain = (QUERY_DOMAIN if kind == "query" else GALLERY_DOMAIN)[direction]
    with pytest.raises(AnnotationError) as err:
        build_eval_dataset(cfg, path, domain)
    assert str(err.value) == f"{path}: empty list: expected at least one non-blank line"


@EMPTY_TEXTS
@pytest.mark.parametrize("key", ["train", *(f"{d}.{k}" for d in DIRECTIONS for k in LIST_KINDS)])
def test_validator_reports_an_empty_list_file(mini_root, tmp_path, capsys, key, text):
    paths = lists_copy(mini_root, tmp_path)
    if key == "train":
        path = paths.train_file
    else:
        direction, kind = key.split(".")
        path = paths.direction_files(direction)[LIST_KINDS.index(kind)]
    overwrite(path, text.encode())
    report = validate(paths.root, max_items=3)
    assert report.problems["error"]["empty list"] == [f"{path}: empty list: expected at least one non-blank line"]
    assert validate_main([paths.root, "--max-items", "3"]) == 1
    assert f"ERROR empty list: 1\n  {path}: empty list" in capsys.readouterr().out


def test_validator_checks_the_first_bytes_of_every_image(mini_root, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(mini_root, root)
    p = DatasetPaths(root)
    entries = parse_train_file(p.train_file)
    goods_line, goods_entry = next((i, e) for i, e in enumerate(entries, 1) if e.goods)
    video_line, video_entry = next((i, e) for i, e in enumerate(entries, 1) if e.videos)
    goods_gallery = parse_item_list(p.gallery_list("video2goods"))
    video_gallery = parse_item_list(p.gallery_list("goods2video"))
    planted = {  # path -> (data, the list line referencing it, expected message)
        p.image_path(goods_entry.goods[0]): (b"", f"{p.train_file}:{goods_line}", "zero-byte file, expected an image"),
        os.path.join(p.images_dir("video"), read_frame_ids(p.frameid_path(video_entry.videos[0]))[0]): (
            b"version https://git-lfs.github.com/spec/v1\n", f"{p.train_file}:{video_line}",
            "not an image: starts with b'version http', expected JPEG, PNG, GIF, BMP, WEBP"),
        os.path.join(p.images_dir("goods"), goods_gallery[0].frames[0]): (
            b"<html>404</html>", f"{p.gallery_list('video2goods')}:1",
            "not an image: starts with b'<html>404</h', expected JPEG, PNG, GIF, BMP, WEBP"),
        os.path.join(p.images_dir("video"), video_gallery[0].frames[-1]): (
            b"", f"{p.gallery_list('goods2video')}:1", "zero-byte file, expected an image"),
    }
    for path, (data, _, _) in planted.items():
        overwrite(path, data)
    # the other formats PIL opens pass, whatever the file's extension
    for item, fmt in zip(goods_gallery[1:], ("PNG", "GIF", "BMP", "WEBP")):
        path = os.path.join(p.images_dir("goods"), item.frames[0])
        with Image.open(path) as im:
            im.load()
        im.save(path, fmt)

    report = validate(root)
    assert report.kinds() == {"unreadable image"}
    assert sorted(report.problems["error"]["unreadable image"]) == sorted(
        f"{where}: {path}: {message}" for path, (_, where, message) in planted.items())
    # decoding finds nothing more, and reports the planted files the same way
    assert validate(root, decode_images=True).problems == report.problems
