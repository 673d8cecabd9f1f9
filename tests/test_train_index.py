"""The memory-mapped training index: the parser's entries and errors, the sampler's plans, its cache."""
import os
import pickle

import pytest

from datasets import train_index
from datasets.annotations import AnnotationError, DatasetPaths, parse_train_file
from datasets.sampler import DomainBatchSampler, ItemBatchSampler
from datasets.train_index import load_train_index


def test_entries_and_sampler_plans_equal_the_parsers_on_the_mini_set(mini_root, tmp_path):
    path = DatasetPaths(mini_root).train_file
    parsed, index = parse_train_file(path), load_train_index(path, str(tmp_path))
    assert len(index) == len(parsed) and list(index) == parsed
    assert [index.query(i) for i in range(len(index))] == [e.query for e in parsed]
    assert all(type(p) is int for i in range(len(index)) for p in index.goods(i) + index.videos(i))
    for sampler in (DomainBatchSampler, ItemBatchSampler):
        for world_size in (1, 2):
            a, b = sampler(parsed, 4, 0, world_size, seed=7), sampler(index, 4, 0, world_size, seed=7)
            for epoch in range(3):
                assert pickle.dumps(a.global_batches(epoch)) == pickle.dumps(b.global_batches(epoch))


@pytest.mark.parametrize("line", [
    "only two\tfields", "\t1\t2", "q\tNone\tNone", "q\t1,x\t2", "q\t-3\tNone", "q\t1\t2\tenglish\textra",
])
def test_malformed_lines_give_the_parsers_error_and_leave_no_cache(tmp_path, line):
    path = tmp_path / "train.txt"
    path.write_text("红色杯子\t1,2\t3\n" + line + "\n", encoding="utf-8")
    with pytest.raises(AnnotationError) as expected:
        parse_train_file(str(path))
    cache = tmp_path / "cache"
    with pytest.raises(AnnotationError) as got:
        load_train_index(str(path), str(cache))
    assert str(got.value) == str(expected.value) and f"{path}:2" in str(got.value)
    assert not cache.exists() or not os.listdir(cache)


def test_blank_lines_none_trailing_commas_and_a_bom_read_as_the_parser_reads_them(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes("\ufeff红色杯子\t11,12\tNone\n\n 蓝色背包 \tNone\t50001\r\n格子帽子\t7\t8,9,\n".encode())
    assert list(load_train_index(str(path), str(tmp_path / "cache"))) == parse_train_file(str(path))


def test_a_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes("红色杯子\t1\tNone\n".encode("gbk"))
    with pytest.raises(AnnotationError, match=f"{path}: expected UTF-8 text"):
        load_train_index(str(path), str(tmp_path / "cache"))


def test_the_cache_is_reused_and_follows_the_file(tmp_path, monkeypatch):
    path = tmp_path / "train.txt"
    path.write_text("a\t1\tNone\nb\tNone\t2,3\n", encoding="utf-8")
    first = load_train_index(str(path), str(tmp_path / "cache"))
    # a cached open parses nothing
    monkeypatch.setattr(train_index, "parse_train_line", lambda *a: pytest.fail("parsed again"))
    again = load_train_index(str(path), str(tmp_path / "cache"))
    assert again.folder == first.folder and list(again) == list(first)
    monkeypatch.undo()
    path.write_text("a\t1\tNone\nb\tNone\t2,3\nc\t4\t5\n", encoding="utf-8")  # edited: size and mtime change
    edited = load_train_index(str(path), str(tmp_path / "cache"))
    assert edited.folder != first.folder and len(edited) == 3 and edited.goods(2) == [4]


def test_a_partial_cache_is_never_used(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("a\t1\tNone\n", encoding="utf-8")
    cache = tmp_path / "cache"
    folder = train_index.index_folder(str(path), str(cache), train_index.index_key(str(path)))
    # what a process killed while building leaves: its temporary folder, arrays half written, no meta.json
    partial = f"{folder}.partial99999"
    os.makedirs(partial)
    with open(os.path.join(partial, "query_bytes.npy"), "wb") as f:
        f.write(b"\x93NUMPY truncated")
    index = load_train_index(str(path), str(cache))
    assert index.folder == folder and list(index) == parse_train_file(str(path))


def test_a_build_that_fails_while_writing_removes_its_partial_folder(tmp_path, monkeypatch):
    path = tmp_path / "train.txt"
    path.write_text("a\t1\tNone\nb\tNone\t2\n", encoding="utf-8")
    saved = []

    def full_disk(file, array):
        if saved:
            raise OSError(28, "No space left on device")
        saved.append(file)
        open(file, "wb").close()

    monkeypatch.setattr(train_index.np, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        load_train_index(str(path), str(tmp_path / "cache"))
    assert saved and os.listdir(tmp_path / "cache") == []  # neither the partial folder nor a cache


def test_workers_receive_the_folder_not_the_arrays(mini_root, tmp_path):
    index = load_train_index(DatasetPaths(mini_root).train_file, str(tmp_path))
    blob = pickle.dumps(index)
    assert len(blob) < 1000 and list(pickle.loads(blob)) == list(index)
