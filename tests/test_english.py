"""English texts of the English-text families as the authors ship them: the training list's 4th field, the
line-aligned English query file, `*_eng.txt` item texts, HTML entities, data.english_rule, and the merge of
training lines that repeat a query text."""
import logging
import os

import pytest
from PIL import Image

from datasets.annotations import (AnnotationError, DatasetPaths, TrainEntry, count_duplicate_queries,
                                  merge_duplicate_queries, parse_train_file, parse_train_line)
from datasets.eval_dataset import EvalDataset
from datasets.sampler import TrainSample
from datasets.tokenizer import Tokenizer
from datasets.train_dataset import TrainDataset
from datasets.train_index import load_train_index
from datasets.translations import Translations, english_queries_file


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer()


def data_section(translations=None, english_suffix=None, english_rule="per_field"):
    return {"translations": translations, "english_suffix": english_suffix, "english_rule": english_rule}


def write(path, text):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def add_goods(paths, pid, title, english_title=None):
    Image.new("RGB", (20, 16), (90, 90, 90)).save(_mkdir(paths.image_path(pid)), "PNG")
    write(paths.text_path("goods", pid), f"{pid}\n类目\n品牌\n实体\n{title}\n描述\n")
    if english_title is not None:
        write(paths.text_path("goods", pid)[:-4] + "_eng.txt",
              f"{pid}\ncategory\nbrand\nentity\n{english_title}\ndesc\n")


def _mkdir(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def train_dataset(paths, entries, translations, tokenizer):
    return TrainDataset(paths, entries, num_frames=2, image_size=16, query_max_len=20, text_max_len=90,
                        seed=0, title_aug_prob=0.0, video_text_keep_prob=1.0, translations=translations,
                        make_tokenizer=lambda: tokenizer)


# ----------------------------------------------------------------------------- the 4th field


def test_a_fourth_field_is_the_english_query_of_english_families_only(tmp_path, tokenizer):
    assert parse_train_line("红色杯子\t7\tNone\tred cup ", "t.txt", 1) == TrainEntry("红色杯子", [7], [], "red cup")
    assert parse_train_line("红色杯子\t7\tNone\t", "t.txt", 1).english is None
    with pytest.raises(AnnotationError, match=r"t.txt:3: expected 3 or 4 tab-separated fields .* got 5"):
        parse_train_line("a\t1\tNone\tb\tc", "t.txt", 3)
    path = write(tmp_path / "train.txt", "红色杯子\t7\tNone\tred cup\n蓝色背包\t8\tNone\n")
    index = load_train_index(path, str(tmp_path / "cache"))
    assert [index.english(i) for i in range(2)] == ["red cup", None]
    assert list(index) == parse_train_file(path)
    paths = DatasetPaths(tmp_path)
    add_goods(paths, 7, "杯子")
    add_goods(paths, 8, "背包")

    def query_ids(family, i, pid):
        ds = train_dataset(paths, index, Translations.for_family(family, data_section()), tokenizer)
        return ds[TrainSample(0, i, "goods", pid)]["query_ids"].tolist()

    assert query_ids("clip", 0, 7) == tokenizer(["red cup"], 20)[0][0].tolist()
    assert query_ids("chinese_clip", 0, 7) == tokenizer(["红色杯子"], 20)[0][0].tolist()
    assert query_ids("clip", 1, 8) == tokenizer(["蓝色背包"], 20)[0][0].tolist()  # no English: kept, counted
    ds = train_dataset(paths, index, Translations.for_family("clip", data_section()), tokenizer)
    for i, pid in ((0, 7), (1, 8)):
        ds[TrainSample(0, i, "goods", pid)]
    assert ds.raw_counts()["untranslated_queries"] == 1


def test_the_index_cache_follows_the_format_and_the_english_file(tmp_path):
    train = write(tmp_path / "train.txt", "a\t1\tNone\nb\t2\tNone\n")
    english = write(tmp_path / "english.txt", "A\nB\n")
    plain = load_train_index(train, str(tmp_path / "cache"))
    aligned = load_train_index(train, str(tmp_path / "cache"), english)
    assert plain.folder != aligned.folder and [aligned.english(i) for i in range(2)] == ["A", "B"]
    write(english, "A\nBee\n")  # edited: size changes
    edited = load_train_index(train, str(tmp_path / "cache"), english)
    assert edited.folder != aligned.folder and edited.english(1) == "Bee"


# ----------------------------------------------------------------------------- line-aligned English queries


def test_a_line_aligned_file_is_told_from_a_table_and_its_length_is_checked(tmp_path):
    train = write(tmp_path / "train.txt", "红色杯子\t1\tNone\n\n蓝色背包\t2\tNone\n格子帽子\t3\tNone\n")
    table = write(tmp_path / "table.tsv", "红色杯子\tred cup\n")
    short = write(tmp_path / "query_english.txt", "red cup\nblue backpack\n")
    assert english_queries_file(data_section(table)) is None and english_queries_file(data_section(short)) == short
    assert english_queries_file(data_section()) is None
    with pytest.raises(AnnotationError) as e:
        load_train_index(train, str(tmp_path / "cache"), short)
    message = str(e.value)
    assert short in message and train in message and "has 2 lines" in message and "has 3 query lines" in message
    aligned = write(tmp_path / "aligned.txt", "red cup\n\nchecked hat\n")  # one line per non-blank training line
    index = load_train_index(train, str(tmp_path / "cache"), aligned)
    assert [index.english(i) for i in range(3)] == ["red cup", None, "checked hat"]
    both = write(tmp_path / "both.txt", "红色杯子\t1\tNone\tred cup\n")
    with pytest.raises(AnnotationError, match=f"{both}:1: expected no English 4th field"):
        load_train_index(both, str(tmp_path / "cache"), write(tmp_path / "one.txt", "red cup\n"))


# ----------------------------------------------------------------------------- *_eng.txt item texts


def test_eng_files_beside_the_item_texts_are_read_in_training_and_evaluation(tmp_path, tokenizer):
    paths = DatasetPaths(tmp_path)
    add_goods(paths, 7, "纯棉短袖", english_title="cotton T-shirt")
    add_goods(paths, 8, "雨伞")  # no _eng.txt
    english = Translations.for_family("clip", data_section(english_suffix="_eng"))
    assert english.text_path(os.path.join("a", "7.txt")) == os.path.join("a", "7_eng.txt")
    entries = [TrainEntry("短袖", [7], [], "t-shirt"), TrainEntry("雨伞", [8], [])]
    ds = train_dataset(paths, entries, english, tokenizer)
    assert ds[TrainSample(0, 0, "goods", 7)]["text_ids"].tolist() == tokenizer(["cotton T-shirt"], 90)[0][0].tolist()
    ds[TrainSample(0, 1, "goods", 8)]
    assert ds.raw_counts()["unreadable_texts"] == 1  # a missing _eng.txt is a missing text
    chinese = train_dataset(paths, [TrainEntry("短袖", [7], [])], Translations.for_family("chinese_clip",
                                                                                           data_section()), tokenizer)
    assert chinese[TrainSample(0, 0, "goods", 7)]["text_ids"].tolist() == tokenizer(["纯棉短袖"], 90)[0][0].tolist()
    listing = write(tmp_path / "gallery.txt", "7\tgoods\tq\t7/7.jpg\t7/7.txt\n")
    ev = EvalDataset(paths, listing, num_frames=2, image_size=16, text_max_len=90, translations=english,
                     make_tokenizer=lambda: tokenizer)
    assert ev[0]["text_ids"].tolist() == tokenizer(["cotton T-shirt"], 90)[0][0].tolist()


# ----------------------------------------------------------------------------- HTML entities


def test_html_entities_of_every_english_text_are_unescaped_and_counted(tmp_path):
    table = write(tmp_path / "t.tsv", "女童棉服\tgirl&#39;s padded clothes\n连衣裙\tdress\n")
    t = Translations(table)
    assert t.query("女童棉服") == "girl's padded clothes"
    assert t.query("x", "women&#39;s straight leg pants") == "women's straight leg pants"  # the list's English
    assert t.query("连衣裙") == "dress" and t.query("x", "Tom &amp; Jerry") == "Tom & Jerry"
    assert t.item_fields("video", {"title": "R&amp;B", "text": "连衣裙", "caption": "a &lt; b"}) == {
        "title": "R&B", "text": "dress", "caption": "a < b"}
    assert t.item_fields("goods", {"title": "连衣裙"})["title"] == "dress"
    assert t.as_dict() == {"untranslated_queries": 0, "untranslated_texts": 0, "unescaped_queries": 3,
                           "unescaped_texts": 1}


# ----------------------------------------------------------------------------- data.english_rule


def test_english_rule_authors_cuts_at_70_and_blanks_a_text_with_chinese(tmp_path):
    table = write(tmp_path / "t.tsv", "红色\tred\n")
    authors, per_field = Translations(table, rule="authors"), Translations(table, rule="per_field")
    long_text = "cotton " * 12  # 84 characters
    fields = {"title": "红色", "text": "新款 summer", "caption": None}
    # authors: fields kept as translated (Chinese included), the composed text cut at 70, blank if Chinese remains
    assert authors.item_fields("video", fields) == {"title": "red", "text": "新款 summer", "caption": None}
    assert authors.item_text("red|新款 summer") == ""
    assert authors.item_text(long_text) == long_text[:70]
    assert authors.item_text("a" * 70 + "红色") == "a" * 70  # Chinese past the cut does not blank
    assert authors.counts["untranslated_texts"] == 1
    # per_field: the Chinese field is left out, the composed text is not cut
    assert per_field.item_fields("video", fields) == {"title": "red", "text": None, "caption": None}
    assert per_field.item_fields("goods", {"title": "红色 dress"})["title"] == ""
    assert per_field.item_text(long_text) == long_text
    assert per_field.counts["untranslated_texts"] == 2


# ----------------------------------------------------------------------------- repeated query texts


def test_lines_of_one_query_text_are_merged_counted_and_logged(tmp_path, caplog):
    lines = ["红色杯子\t1,2\tNone", "蓝色背包\tNone\t9", " 红色杯子 \t2,3\t8\tred cup", "格子帽子\t4\tNone",
             "蓝色背包\t5\t9", "红色杯子\tNone\t7"]
    path = write(tmp_path / "train.txt", "\n".join(lines) + "\n")
    parsed = parse_train_file(path)
    assert count_duplicate_queries(e.query for e in parsed) == 3
    expected = [TrainEntry("红色杯子", [1, 2, 3], [8, 7], "red cup"), TrainEntry("蓝色背包", [5], [9]),
                TrainEntry("格子帽子", [4], [])]
    assert merge_duplicate_queries(parsed) == expected
    with caplog.at_level(logging.INFO, logger="datasets.train_index"):
        index = load_train_index(path, str(tmp_path / "cache"))
    assert list(index) == expected and (index.lines, index.duplicate_lines) == (6, 3)
    assert "6 lines, 3 queries; 3 duplicate lines" in caplog.text


def test_the_english_settings_are_checked_with_the_config():
    from engine.checks import validate_config
    from utils.config import SCHEMA_PATH, ConfigError, load_config

    assert load_config(SCHEMA_PATH)["data"]["english_rule"] == "per_field"
    with pytest.raises(ConfigError, match="data.english_rule='cut'"):
        validate_config(load_config(SCHEMA_PATH, ["data.english_rule=cut"]))
    with pytest.raises(ConfigError, match="data.english_suffix is for the English-text families"):
        validate_config(load_config(SCHEMA_PATH, ["data.english_suffix=_eng"]))
    validate_config(load_config(SCHEMA_PATH, ["model.family=clip", "model.fusion.type=add",
                                              "data.english_suffix=_eng", "data.english_rule=authors"]))


def test_merged_lines_take_the_first_english_of_a_line_aligned_file(tmp_path):
    train = write(tmp_path / "train.txt", "红色杯子\t1\tNone\n蓝色背包\t2\tNone\n红色杯子\t3\tNone\n红色杯子\t1\t4\n")
    english = write(tmp_path / "english.txt", "\nblue bag\nred cup\nred mug\n")
    index = load_train_index(train, str(tmp_path / "cache"), english)
    assert list(index) == [TrainEntry("红色杯子", [1, 3], [4], "red cup"), TrainEntry("蓝色背包", [2], [], "blue bag")]
