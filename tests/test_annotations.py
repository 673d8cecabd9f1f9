"""Parsing of the annotation files: values, synonyms, path-style ids, and errors naming file and line."""
import subprocess
import sys

import pytest

from datasets.annotations import (AnnotationError, DatasetPaths, TestItem, TrainEntry, normalize_domain, parse_gt,
                                  parse_item_list, parse_train_file, read_entities, read_frame_ids, read_goods_text,
                                  read_video_text)
from tests.helpers import REPO_ROOT


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return str(path)


def test_train_file_values_blank_lines_and_none(tmp_path):
    path = write(tmp_path, "train.txt", "红色杯子\t11,12\tNone\n\n 蓝色背包 \tNone\t50001\r\n格子帽子\t7\t8,9,\n")
    assert parse_train_file(path) == [TrainEntry("红色杯子", [11, 12], []), TrainEntry("蓝色背包", [], [50001]),
                                      TrainEntry("格子帽子", [7], [8, 9])]


@pytest.mark.parametrize("bad_line, expected", [
    ("红色杯子\t11,12", "expected 3 or 4 tab-separated fields"),
    ("红色杯子\t11,x2\tNone", "expected goods pid as a non-negative decimal integer, got 'x2'"),
    ("红色杯子\tNone\t-5", "expected video pid as a non-negative decimal integer"),
    ("红色杯子\tNone\tNone", "expected at least one goods or video pid"),
    ("\t1\tNone", "expected a non-empty query text"),
])
def test_train_file_errors_name_file_and_line(tmp_path, bad_line, expected):
    # the bad line is line 4: blank lines count in the numbering
    path = write(tmp_path, "train.txt", f"a\t1\tNone\n\nb\tNone\t2\n{bad_line}\nc\t3\t4\n")
    with pytest.raises(AnnotationError) as err:
        parse_train_file(path)
    assert str(err.value).startswith(f"{path}:4: ")
    assert expected in str(err.value)
    assert (err.value.path, err.value.line) == (path, 4)


def test_item_list_values_and_photo_synonym(tmp_path):
    path = write(tmp_path, "q.txt", "\ufeff123456\tgoods\t红色杯子\t23456/123456.jpg\t23456/123456.txt\n"
                                    "7\tphoto\t\t7/7_0.jpg,7/7_1.jpg\t7/7.txt\n8\tVideo\tq\t8/a.jpg\t8/8.txt\n")
    assert parse_item_list(path) == [
        TestItem(123456, "goods", "红色杯子", ["23456/123456.jpg"], "23456/123456.txt"),
        TestItem(7, "video", "", ["7/7_0.jpg", "7/7_1.jpg"], "7/7.txt"),
        TestItem(8, "video", "q", ["8/a.jpg"], "8/8.txt")]
    with pytest.raises(AnnotationError, match="expected a video item .*, got goods") as err:
        parse_item_list(path, domain="video")
    assert (err.value.path, err.value.line) == (path, 1)
    assert len(parse_item_list(write(tmp_path, "v.txt", "7\tphoto\t\t7/7_0.jpg\t7/7.txt\n"), domain="video")) == 1


@pytest.mark.parametrize("bad_line, expected", [
    ("9\tmovie\tq\t9/9.jpg\t9/9.txt", "unknown domain 'movie'"),
    ("9\tgoods\tq\t9/9.jpg,9/b.jpg\t9/9.txt", "expected exactly one image path for a goods item, got 2"),
    ("9\tvideo\tq\t\t9/9.txt", "expected at least one comma-separated frame path"),
    ("9\tvideo\tq\t9/9.jpg", "expected 5 tab-separated fields"),
    ("9x\tvideo\tq\t9/9.jpg\t9/9.txt", "expected pid as a non-negative decimal integer, got '9x'"),
    ("1\tgoods\tq\t1/1.jpg\t1/1.txt", "expected unique pids, 1 already on line 1"),
])
def test_item_list_errors_name_file_and_line(tmp_path, bad_line, expected):
    path = write(tmp_path, "gallery.txt", f"1\tgoods\tq\t1/1.jpg\t1/1.txt\n2\tgoods\tq\t2/2.jpg\t2/2.txt\n{bad_line}\n")
    with pytest.raises(AnnotationError, match=expected) as err:
        parse_item_list(path)
    assert str(err.value).startswith(f"{path}:3: ")


def test_gt_ids_written_as_paths(tmp_path):
    path = write(tmp_path, "gt.txt", "12\t5,6\n"
                                     "frames/34/34_0.jpg\t4/4.jpg,C:\\imgs\\9.jpg\n"
                                     "12_7\t6,7\n")  # a repeated query (written as a path) is merged
    assert parse_gt(path) == {12: [5, 6, 7], 34: [4, 9]}


@pytest.mark.parametrize("bad_line, expected", [
    ("1\t", "expected at least one gallery id"),
    ("1\t2_3.jpg", "expected gallery id as a non-negative decimal integer, got '2_3'"),
    ("q1.jpg\t2", "expected query id as a non-negative decimal integer, got 'q1'"),
    ("1 2 3", "expected 2 tab-separated fields"),
])
def test_gt_errors_name_file_and_line(tmp_path, bad_line, expected):
    path = write(tmp_path, "gt.txt", f"5\t6\n{bad_line}\n")
    with pytest.raises(AnnotationError, match=expected) as err:
        parse_gt(path)
    assert str(err.value).startswith(f"{path}:2: ")


def test_goods_text_title_and_wrong_line_count(tmp_path):
    good = write(tmp_path, "g.txt", "42\r\n家居/杯子\r\n优品\r\n杯子\r\n优品 红色马克杯 包邮\r\n质感很好\r\n")
    assert read_goods_text(good) == {"itemid": "42", "category": "家居/杯子", "brand": "优品", "entity": "杯子",
                                     "title": "优品 红色马克杯 包邮", "desc": "质感很好"}
    five = write(tmp_path, "g5.txt", "42\n家居/杯子\n优品\n杯子\n优品 红色马克杯 包邮\n")
    seven = write(tmp_path, "g7.txt", "42\n家居/杯子\n优品\n杯子\n优品 红色马克杯 包邮\n质感很好\n多余\n")
    assert read_goods_text(five)["title"] == "" and read_goods_text(seven)["title"] == ""


def test_goods_text_that_is_not_utf8_names_the_file(tmp_path):
    path = write(tmp_path, "g.txt", "42\n家居\n优品\n杯子\n标题\n描述\n", encoding="gbk")
    with pytest.raises(AnnotationError, match="expected UTF-8") as err:
        read_goods_text(path)
    assert path in str(err.value)


def test_video_text_nulls(tmp_path):
    path = write(tmp_path, "v.txt", "null\n#开箱 红色杯子\n好用\n")
    assert read_video_text(path) == {"caption": None, "title": "#开箱 红色杯子", "text": "好用"}
    assert read_video_text(write(tmp_path, "v2.txt", "a\nb\n")) == {"caption": "a", "title": "b", "text": None}
    assert read_video_text(write(tmp_path, "v4.txt", "a\nnull\nc\nd\n")) == {"caption": "a", "title": None, "text": "c"}


def test_frame_ids(tmp_path):
    assert read_frame_ids(write(tmp_path, "f.txt", "3/3_0.jpg, 3/3_1.jpg,3/3_2.jpg,\n")) == \
        ["3/3_0.jpg", "3/3_1.jpg", "3/3_2.jpg"]
    empty = write(tmp_path, "e.txt", "\n")
    with pytest.raises(AnnotationError, match=f"^{empty}:1: .*file is empty"):
        read_frame_ids(empty)
    two = write(tmp_path, "two.txt", "a.jpg\nb.jpg\n")
    with pytest.raises(AnnotationError, match=f"^{two}:2: expected a single line"):
        read_frame_ids(two)


def test_entities_skip_blank_lines(tmp_path):
    assert read_entities(write(tmp_path, "level1.txt", "红色杯子\n\n  蓝色背包 \n")) == ["红色杯子", "蓝色背包"]


def test_normalize_domain():
    assert [normalize_domain(d) for d in ("goods", "video", "photo", " Photo ")] == ["goods", "video", "video", "video"]
    with pytest.raises(ValueError, match="expected goods, video or photo"):
        normalize_domain("image")


def test_dataset_paths_follow_the_layout():
    p = DatasetPaths("/data", "Real20M")
    assert p.image_path(123456) == "/data/Real20M/goods/images/23456/123456.jpg"
    assert p.text_path("photo", 50000) == "/data/Real20M/video/text/0/50000.txt"
    assert p.frameid_path(49999) == "/data/Real20M/video/frameid/49999/49999.txt"
    assert p.raw_video_path(100001) == "/data/Real20M/video/raw/1/100001.mp4"
    assert p.train_file == "/data/train_file/train.txt"
    assert p.gt_file("goods2video") == "/data/test_file/goods2video_gt.txt"
    assert p.queries == "/data/Real20M/query/queries.txt"
    with pytest.raises(ValueError, match="unknown direction"):
        p.query_list("goods2goods")


def test_transformers_bert_tokenizer_works_from_repo_root():
    """Our `datasets` package shadows Hugging Face's; what we use of transformers must still work."""
    code = (
        "import os, datasets, transformers, cn_clip.clip as clip\n"
        "assert os.path.dirname(datasets.__file__) == os.path.join(os.getcwd(), 'datasets'), datasets.__file__\n"
        "vocab = os.path.join(os.path.dirname(clip.__file__), 'vocab.txt')\n"
        "tok = transformers.BertTokenizer(vocab=vocab)  # transformers 5: `vocab`, not `vocab_file`\n"
        "ids = tok(['红色条纹马克杯'], padding='max_length', max_length=12)['input_ids'][0]\n"
        "ref = clip.tokenize(['红色条纹马克杯'], context_length=12)[0].tolist()\n"
        "assert len(tok.get_vocab()) == 21128 and ids == ref, (ids, ref)\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("text", ["", "\n  \n\r\n"], ids=["zero lines", "blank lines"])
def test_empty_item_list_is_an_error_naming_the_file(tmp_path, text):
    path = write(tmp_path, "gallery.txt", text)
    with pytest.raises(AnnotationError) as err:
        parse_item_list(path)
    assert str(err.value) == f"{path}: empty list: expected at least one non-blank line"
