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
from tests.helpers import REPO_ROOT
from utils.config import load_config

BASE_CONFIG = os.path.join(REPO_ROOT, "configs", "base.yaml")
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
    assert set(report.totals["error"]) == {"unreadable image"}
    assert sorted(report.problems["error"]["unreadable image"]) == sorted(
        f"{where}: {path}: {message}" for path, (_, where, message) in planted.items())
    # decoding finds nothing more, and reports the planted files the same way
    assert validate(root, decode_images=True).problems == report.problems


def queries_copy(mini_root, tmp_path):
    """Paths of a copy of the mini dataset's list files and query/queries.txt; goods/ and video/ are the mini
    dataset's (symlinks)."""
    root, data = tmp_path / "queries", os.path.join(mini_root, "Real400K")
    shutil.copytree(mini_root, root, ignore=lambda d, names: ["Real400K"] if d == mini_root else [])
    shutil.copytree(data, root / "Real400K", ignore=lambda d, names: ["goods", "video"] if d == data else [])
    for domain in ("goods", "video"):
        os.symlink(os.path.join(data, domain), root / "Real400K" / domain)
    return DatasetPaths(root)


def test_queries_file_is_optional_and_checked_when_present(mini_root, tmp_path):
    paths = queries_copy(mini_root, tmp_path)
    os.remove(paths.queries)
    report = validate(paths.root, max_items=3)
    assert report.ok, report.format()
    assert report.counts["queries.txt lines"] == "absent (optional)"
    overwrite(paths.queries, "红色杯子\n".encode() + b"\xff\xfe\n")
    report = validate(paths.root, max_items=3)
    assert set(report.totals["error"]) == {"unreadable file"}
    assert report.problems["error"]["unreadable file"][0].startswith(f"{paths.queries}: expected UTF-8 text")
    overwrite(paths.queries, b"\n  \n")
    assert validate(paths.root, max_items=3).problems["error"]["empty list"] == [
        f"{paths.queries}: empty list: expected at least one non-blank line"]
    overwrite(paths.queries, "红色杯子\n\n蓝色背包\n".encode())
    report = validate(paths.root, max_items=3)
    assert report.ok and report.counts["queries.txt lines"] == 2


def test_validator_counts_lines_repeating_a_query_text(mini_root, tmp_path, capsys):
    paths = lists_copy(mini_root, tmp_path)
    entries = parse_train_file(paths.train_file)
    with open(paths.train_file, encoding="utf-8") as f:
        lines = f.read().splitlines()
    # three more lines of earlier texts: two repeated as they are, one with another line's items and spaces around
    extra = [lines[0], lines[1], f"  {entries[0].query} \t{lines[2].split(chr(9), 1)[1]}"]
    with open(paths.train_file, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in extra))
    expected = len(entries) - len({e.query for e in entries}) + 3
    report = validate(paths.root, max_items=3)
    assert report.ok, report.format()
    assert report.counts["train lines repeating an earlier query text"] == expected
    assert validate_main([paths.root, "--max-items", "3"]) == 0
    assert f"  train lines repeating an earlier query text: {expected}\n" in capsys.readouterr().out


def test_photo_and_video_name_the_same_domain(mini_root, tmp_path):
    paths = lists_copy(mini_root, tmp_path)
    cfg = load_config(BASE_CONFIG, [f"data.root={paths.root}", "data.num_workers=0"])
    video_lists = [paths.query_list("video2goods"), paths.gallery_list("goods2video")]
    for path in video_lists:
        before = parse_item_list(path, domain="video")
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        assert all(line.split("\t")[1] == "photo" for line in lines)  # the mini dataset writes the authors' name
        # every other line renamed: one list holds both names
        renamed = [line.replace("\tphoto\t", "\tvideo\t" if i % 2 else "\tVIDEO\t", 1) for i, line in enumerate(lines)]
        overwrite(path, "".join(line + "\n" for line in renamed).encode())
        assert parse_item_list(path, domain="video") == before
        assert [i.pid for i in build_eval_dataset(cfg, path, "video").items] == [i.pid for i in before]
    report = validate(paths.root, max_items=3)
    assert report.ok, report.format()
