"""Item texts (goods title, video text rule) and their training-time augmentations."""
import random
from collections import Counter

from datasets.text import augment_title, goods_title, video_text


def fields(caption, title, text):
    return {"caption": caption, "title": title, "text": text}


def test_goods_text_is_the_title():
    parsed = {"itemid": "1", "category": "c", "brand": "b", "entity": "e", "title": "纯棉T恤", "desc": "d"}
    assert goods_title(parsed) == "纯棉T恤"


def test_video_text_parts_order_and_nulls():
    assert video_text(fields("好看", "红色杯子", "今天买的杯子")) == "红色杯子|今天买的杯子|好看"
    assert video_text(fields(None, "红色杯子", None)) == "红色杯子"
    assert video_text(fields("好看", None, None)) == "好看"
    assert video_text(fields(None, None, None)) == ""
    assert video_text(fields("好看", None, "正文")) == "正文|好看"
    # the text part is cut to 40 characters, and left out when that equals the title
    long_text = "字" * 50
    assert video_text(fields(None, "题", long_text)) == "题|" + "字" * 40
    assert video_text(fields("配", "字" * 40, long_text)) == "字" * 40 + "|配"
    # the joined text is cut to 80 characters
    assert video_text(fields("尾" * 30, "题" * 30, "文" * 30)) == "题" * 30 + "|" + "文" * 30 + "|" + "尾" * 18


def test_video_text_parts_kept_with_probability():
    parsed = fields("C", "T", "X")
    rng = random.Random(0)
    assert video_text(parsed, rng, keep_prob=1.0) == "T|X|C"
    assert video_text(parsed, rng, keep_prob=0.0) == ""
    kept = Counter()
    draws = 4000
    for _ in range(draws):
        out = video_text(parsed, rng, keep_prob=0.8)
        parts = out.split("|") if out else []
        assert parts == [p for p in ("T", "X", "C") if p in parts]  # order preserved
        kept.update(parts)
    for part in "TXC":
        assert abs(kept[part] / draws - 0.8) < 0.03
    assert video_text(parsed, random.Random(5), 0.8) == video_text(parsed, random.Random(5), 0.8)


def decode_edits(title, augmented):
    """Recover the operation applied at each position of a title of distinct characters."""
    ops, j = [], 0
    for ch in title:
        if j < len(augmented) and augmented[j] == ch:
            j += 1
            if j < len(augmented) and augmented[j] == ch:
                ops.append("double")
                j += 1
            elif j < len(augmented) and augmented[j] == " ":
                ops.append("space")
                j += 1
            else:
                ops.append("keep")
        else:
            ops.append("drop")
    assert j == len(augmented)
    return ops


def test_title_augmentation_edits_a_fifth_of_positions_one_third_each():
    title = "春夏新款纯棉短袖男士圆领宽松"  # 14 distinct characters -> int(2.8) = 2 edits, as the authors count
    ops_count, positions = Counter(), Counter()
    for seed in range(3000):
        ops = decode_edits(title, augment_title(title, random.Random(seed), prob=1.0))
        edited = [i for i, op in enumerate(ops) if op != "keep"]
        assert len(edited) == 2
        ops_count.update(ops[i] for i in edited)
        positions.update(edited)
    for op in ("double", "drop", "space"):
        assert abs(ops_count[op] / 6000 - 1 / 3) < 0.03
    assert set(positions) == set(range(len(title)))


def test_title_augmentation_probability_and_short_titles():
    title = "春夏新款纯棉短袖男士圆领"
    changed = sum(augment_title(title, random.Random(s), prob=0.6) != title for s in range(3000))
    assert abs(changed / 3000 - 0.6) < 0.03
    assert augment_title("短标题九个字符的啊", random.Random(0), prob=1.0) == "短标题九个字符的啊"  # 9 characters
    assert augment_title(title, random.Random(0), prob=0.0) == title
    assert augment_title(title, random.Random(4), 1.0) == augment_title(title, random.Random(4), 1.0)
