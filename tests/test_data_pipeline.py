"""Training and evaluation datasets, collates and loader builders.

Most tests build a tiny dataset of uniformly coloured images in tmp_path, so that the frame
a sample came from can be read back from its pixel values after the crop; the end-to-end
tests run the builders on the generated mini dataset (`mini_root`).
"""
import logging
import os

import pytest
import torch
from PIL import Image

from datasets import build_eval_dataset, build_pretrain_loader, build_train_loader, collate_eval, collate_train
from datasets.annotations import DatasetPaths, TrainEntry, parse_item_list, parse_train_file, read_frame_ids
from datasets.eval_dataset import EvalDataset
from datasets.frames import UnreadableImage, decode_video, load_image, segment_indices
from datasets.loader import collate_pairs
from datasets.sampler import TrainSample
from datasets.tokenizer import Tokenizer
from datasets.train_dataset import TrainDataset
from datasets.transforms import CLIP_MEAN, CLIP_STD
from tests.helpers import REPO_ROOT
from utils.config import load_config

torch.set_num_threads(1)

SIZE = 16
T = 5
MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer()


def gray_level(frame):
    """The 0-255 gray level of a normalised uniform frame [3, H, W]."""
    return round(float((frame * STD + MEAN).mean()) * 255)


def write_image(path, level):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (24, 20), (level, level, level)).save(path, "PNG")  # lossless: the level reads back exactly


def write_text(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def add_goods(paths, pid, level, title="默认商品标题", image="ok"):
    """image: ok | corrupt (truncated bytes) | missing."""
    if image != "missing":
        write_image(paths.image_path(pid), level)
    if image == "corrupt":
        data = open(paths.image_path(pid), "rb").read()
        open(paths.image_path(pid), "wb").write(data[:30])
    write_text(paths.text_path("goods", pid), [str(pid), "类目", "品牌", "实体", title, "描述"])


def add_video(paths, pid, levels, missing=(), text=("好看", "红色杯子", "今天买的")):
    """A video whose frame k is uniformly gray at levels[k]; frames in `missing` are listed but absent."""
    names = []
    for k, level in enumerate(levels):
        name = f"{pid % 50000}/{pid}_{k}.jpg"
        names.append(name)
        if k not in missing:
            write_image(os.path.join(paths.images_dir("video"), name), level)
    write_text(paths.frameid_path(pid), [",".join(names)])
    write_text(paths.text_path("video", pid), [t if t is not None else "null" for t in text])
    return names


def train_dataset(paths, entries, **kw):
    args = dict(num_frames=T, image_size=SIZE, query_max_len=20, text_max_len=90, crop_scale=(0.64, 1.0),
                seed=0, title_aug_prob=0.0, video_text_keep_prob=1.0)
    args.update(kw)
    return TrainDataset(paths, entries, **args)


def test_goods_sample_fields_and_title(tmp_path, tokenizer):
    paths = DatasetPaths(tmp_path)
    add_goods(paths, 7, 90, title="纯棉短袖T恤")
    ds = train_dataset(paths, [TrainEntry("白色短袖", [7], [])])
    out = ds[TrainSample(0, 0, "goods", 7)]
    assert out["frames"].shape == (1, 3, SIZE, SIZE) and out["frames"].dtype == torch.float32
    assert gray_level(out["frames"][0]) == 90
    assert out["pid"] == 7 and out["query_index"] == 0 and out["domain"] == "goods"
    assert torch.equal(out["query_ids"], tokenizer(["白色短袖"], 20)[0][0])
    assert torch.equal(out["text_ids"], tokenizer(["纯棉短袖T恤"], 90)[0][0])
    assert out["query_mask"].shape == (20,) and out["text_mask"].shape == (90,)


def test_title_augmentation_and_video_text_dropout_are_applied(tmp_path, tokenizer):
    paths = DatasetPaths(tmp_path)
    title = "春夏新款纯棉短袖男士圆领宽松上衣"
    add_goods(paths, 1, 50, title=title)
    add_video(paths, 2, [10, 20, 30, 40, 50], text=("配文", "标题", "正文"))
    entries = [TrainEntry("q", [1], [2])]
    plain = tokenizer([title], 90)[0][0]
    ds = train_dataset(paths, entries, title_aug_prob=1.0, video_text_keep_prob=0.5)
    goods_texts = [tuple(ds[TrainSample(e, 0, "goods", 1)]["text_ids"].tolist()) for e in range(20)]
    # an edit that only inserts spaces leaves the tokens as they were (1 title in 27)
    assert goods_texts.count(tuple(plain.tolist())) <= 3 and len(set(goods_texts)) > 10
    video_texts = {tuple(ds[TrainSample(e, 0, "video", 2)]["text_ids"].tolist()) for e in range(40)}
    full = tokenizer(["标题|正文|配文"], 90)[0][0]
    assert tuple(full.tolist()) in video_texts and len(video_texts) > 4  # 8 subsets of 3 parts


def test_unreadable_goods_is_counted_logged_once_and_replaced(tmp_path, tokenizer, caplog):
    paths = DatasetPaths(tmp_path)
    add_goods(paths, 1, 10, image="corrupt")
    add_goods(paths, 2, 20)
    add_goods(paths, 3, 30)
    add_goods(paths, 4, 40, image="missing")
    add_video(paths, 9, [200] * 6)
    entries = [TrainEntry("q0", [1, 2], []), TrainEntry("q1", [3], [9]), TrainEntry("q2", [4], [])]
    ds = train_dataset(paths, entries)
    owner = {2: 0, 3: 1}

    with caplog.at_level(logging.WARNING, logger="datasets.train_dataset"):
        # the query's other goods item stands in first: the query stays the same
        out = ds[TrainSample(0, 0, "goods", 1)]
        assert (out["pid"], out["query_index"], out["domain"]) == (2, 0, "goods")
        assert gray_level(out["frames"][0]) == 20
        again = ds[TrainSample(0, 0, "goods", 1)]
        assert torch.equal(again["frames"], out["frames"])
        assert ds.raw_counts()["unreadable_images"] == 2 and ds.raw_counts()["replaced_samples"] == 2

        # no other item of its own: another query's goods item, never a video
        for epoch in range(6):
            out = ds[TrainSample(epoch, 2, "goods", 4)]
            assert out["domain"] == "goods" and out["pid"] in owner
            assert out["query_index"] == owner[out["pid"]]
            assert out["frames"].shape == (1, 3, SIZE, SIZE)
            assert torch.equal(out["query_ids"], tokenizer([entries[out["query_index"]].query], 20)[0][0])
    messages = [r.getMessage() for r in caplog.records]
    assert sum(paths.image_path(1) in m for m in messages) == 1
    assert sum(paths.image_path(4) in m for m in messages) == 1


def test_replacements_never_repeat_a_query_of_the_global_batch(tmp_path):
    """A third of the goods unreadable, each query with one goods item: every replacement comes from another
    query, and none of them may be a query already in the global batch (2 ranks x 5)."""
    from datasets.sampler import DomainBatchSampler

    paths = DatasetPaths(tmp_path)
    entries = []
    for q in range(60):
        add_goods(paths, q + 1, q, image="missing" if q % 3 == 0 else "ok")
        entries.append(TrainEntry(f"q{q}", [q + 1], []))
    ds = train_dataset(paths, entries)
    ranks = [DomainBatchSampler(entries, 5, rank, 2, seed=3) for rank in (0, 1)]
    batches = 0
    for epoch in range(4):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        for shares in zip(*ranks):
            queries = [ds[sample]["query_index"] for share in shares for sample in share]
            assert len(set(queries)) == len(queries) == 10, (epoch, sorted(queries))
            batches += 1
    assert batches == 24 and ds.raw_counts()["replaced_samples"] >= 60


def test_video_frames_follow_segments_and_skip_unreadable_frames(tmp_path):
    paths = DatasetPaths(tmp_path)
    levels = [10 * (k + 1) for k in range(12)]
    add_video(paths, 5, levels)
    add_video(paths, 6, [11, 22, 33, 44, 55, 66], missing=(1, 3, 5))
    add_video(paths, 7, [70, 80, 90])
    entries = [TrainEntry("q", [], [5, 6, 7])]
    ds = train_dataset(paths, entries)

    for epoch in range(10):
        frames = ds[TrainSample(epoch, 0, "video", 5)]["frames"]
        assert frames.shape == (T, 3, SIZE, SIZE)
        picked = [levels.index(gray_level(f)) for f in frames]
        for i, index in enumerate(picked):
            assert i * 12 // T <= index < (i + 1) * 12 // T

    # 6 frames in 5 segments force frame 1 (missing); the 5 left are all used, so 3 and 5 (missing) are
    # found too; 3 readable frames remain, the last one repeated
    out = ds[TrainSample(0, 0, "video", 6)]
    assert out["pid"] == 6
    assert [gray_level(f) for f in out["frames"]] == [11, 33, 55, 55, 55]
    assert ds.raw_counts()["unreadable_images"] == 3 and ds.raw_counts()["replaced_samples"] == 0

    assert [gray_level(f) for f in ds[TrainSample(0, 0, "video", 7)]["frames"]] == [70, 80, 90, 90, 90]


def test_video_without_readable_frames_is_replaced_by_a_video(tmp_path):
    paths = DatasetPaths(tmp_path)
    add_video(paths, 5, [100, 110], missing=(0, 1))
    add_video(paths, 6, [60] * 5)
    add_goods(paths, 8, 30)
    entries = [TrainEntry("q0", [8], [5]), TrainEntry("q1", [], [6])]
    out = train_dataset(paths, entries)[TrainSample(0, 0, "video", 5)]
    assert (out["pid"], out["query_index"], out["domain"]) == (6, 1, "video")
    assert [gray_level(f) for f in out["frames"]] == [60] * T


def test_malformed_and_missing_texts_are_counted_not_fatal(tmp_path, tokenizer):
    paths = DatasetPaths(tmp_path)
    add_goods(paths, 1, 10)
    write_text(paths.text_path("goods", 1), ["only", "three", "lines"])
    add_goods(paths, 2, 20)
    os.remove(paths.text_path("goods", 2))
    ds = train_dataset(paths, [TrainEntry("q", [1, 2], [])])
    empty = tokenizer([""], 90)[0][0]
    assert torch.equal(ds[TrainSample(0, 0, "goods", 1)]["text_ids"], empty)
    assert torch.equal(ds[TrainSample(0, 0, "goods", 2)]["text_ids"], empty)
    assert ds.raw_counts()["empty_texts"] == 1 and ds.raw_counts()["unreadable_texts"] == 1


def test_epoch_report_turns_summed_counts_into_scalars_and_lines():
    counts = {"unreadable_images": 3, "replaced_samples": 2, "unreadable_texts": 1, "empty_texts": 4, "queries": 8,
              "queries_truncated": 1, "texts": 0, "texts_truncated": 0}
    scalars, lines = TrainDataset.epoch_report(counts)
    assert scalars == {"data/unreadable_images": 3, "data/replaced_samples": 2, "data/unreadable_texts": 1,
                       "data/empty_texts": 4, "data/query_truncation_rate": 0.125, "data/text_truncation_rate": 0.0}
    assert lines == ["data (all ranks): 3 unreadable images, 2 samples replaced, 1 unreadable and 4 empty texts; "
                     "12.5 % of 8 queries and 0.0 % of 0 texts cut to their max length"]

    english = {"untranslated_queries": 5, "untranslated_texts": 6, "unescaped_queries": 7, "unescaped_texts": 9}
    scalars, lines = TrainDataset.epoch_report({**counts, **english})
    assert {k: scalars[f"data/{k}"] for k in english} == english and len(scalars) == 10
    assert lines[1] == ("English texts (all ranks): 5 queries kept in Chinese, 6 item texts left out (no English "
                        "for them, data.english_rule); HTML entities unescaped in 7 queries and 9 item texts")


def test_epoch_report_of_raw_count_differences(tmp_path):
    """The dataset's own counters, differenced over an 'epoch' as the engine does, feed its report."""
    paths = DatasetPaths(tmp_path)
    add_goods(paths, 1, 10, image="missing")
    add_goods(paths, 2, 20, title="长" * 100)
    ds = train_dataset(paths, [TrainEntry("q", [1, 2], [])])
    start = ds.raw_counts()
    ds[TrainSample(0, 0, "goods", 1)]
    ds[TrainSample(0, 0, "goods", 2)]
    now = ds.raw_counts()
    scalars, lines = ds.epoch_report({k: now[k] - start[k] for k in now})
    assert scalars["data/unreadable_images"] == scalars["data/replaced_samples"] == 1
    assert scalars["data/text_truncation_rate"] == 1.0 and scalars["data/query_truncation_rate"] == 0.0
    assert len(lines) == 1 and "100.0 % of 2 texts" in lines[0]


def test_collate_train_stacks_one_domain(tmp_path):
    paths = DatasetPaths(tmp_path)
    for pid in (1, 2, 3):
        add_goods(paths, pid, 10 * pid)
    add_video(paths, 9, [1, 2, 3, 4, 5])
    entries = [TrainEntry(f"q{i}", [i + 1], [9] if i == 0 else []) for i in range(3)]
    ds = train_dataset(paths, entries)
    batch = collate_train([ds[TrainSample(0, i, "goods", i + 1)] for i in range(3)])
    assert batch["frames"].shape == (3, 1, 3, SIZE, SIZE)
    assert batch["domain"] == "goods"
    assert batch["pids"].tolist() == [1, 2, 3] and batch["query_index"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="domain-pure"):
        collate_train([ds[TrainSample(0, 0, "goods", 1)], ds[TrainSample(0, 0, "video", 9)]])


class _CollatesInAWorker(torch.utils.data.Dataset):
    """One item: the three collates' batches of synthetic samples, as {collate: whether each tensor is shared}."""

    def __len__(self):
        return 1

    def __getitem__(self, index):
        def sample(domain, value):
            return {"domain": domain, "pid": value, "index": value, "query_index": value, "epoch": 0,
                    "frames": torch.full((T, 3, 4, 4), float(value)), "text_ids": torch.tensor([value]),
                    "text_mask": torch.tensor([1]), "query_ids": torch.tensor([value]), "query_mask": torch.tensor([1])}

        batches = {"train": collate_train([sample("video", 1), sample("video", 2)]),
                   "pairs": collate_pairs([sample("goods", 1), sample("video", 1)]),
                   "eval": collate_eval([sample("video", 1), sample("video", 2)])}
        return {name: {k: v.is_shared() for k, v in batch.items() if torch.is_tensor(v) and v.dim() > 1}
                for name, batch in batches.items()}


def test_collates_stack_into_shared_memory_in_a_loader_worker():
    # a worker's batch is sent to the main process through shared memory: stacked there, it is not copied again
    in_main = _CollatesInAWorker()[0]
    loader = torch.utils.data.DataLoader(_CollatesInAWorker(), batch_size=None, num_workers=1)
    in_worker = next(iter(loader))
    assert set(in_worker) == {"train", "pairs", "eval"}
    for name in in_worker:
        assert in_worker[name] and all(in_worker[name].values()), name
        assert not any(in_main[name].values()), name


def write_list(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines("\t".join(map(str, row)) + "\n" for row in rows)


def eval_dataset(paths, list_path, **kw):
    return EvalDataset(paths, list_path, num_frames=T, image_size=SIZE, text_max_len=90, **kw)


def test_eval_goods_image_is_preprocessed_as_cn_clip_does(tmp_path, structured_image):
    from cn_clip.clip.utils import image_transform

    paths = DatasetPaths(tmp_path)
    add_goods(paths, 1, 10)
    portrait = structured_image(9 * 6, 16 * 6)
    portrait.save(paths.image_path(1), "PNG")
    list_path = paths.gallery_list("video2goods")
    write_list(list_path, [(1, "goods", "q", "1/1.jpg", "1/1.txt")])
    frames = eval_dataset(paths, list_path)[0]["frames"]
    assert frames.shape == (1, 3, SIZE, SIZE)
    assert (frames[0] - image_transform(SIZE)(portrait)).abs().max() < 1e-4


def test_eval_video_items_take_segment_centres_in_list_order(tmp_path, tokenizer):
    paths = DatasetPaths(tmp_path)
    levels = [10 * (k + 1) for k in range(10)]
    names_a = add_video(paths, 31, levels, text=("配文", "标题", None))
    names_b = add_video(paths, 32, [5, 15, 25])
    list_path = paths.query_list("video2goods")
    write_list(list_path, [(32, "photo", "q", ",".join(names_b), "32/32.txt"),
                           (31, "video", "q", ",".join(names_a), "31/31.txt")])
    ds = eval_dataset(paths, list_path)
    assert len(ds) == 2
    first, second = ds[0], ds[1]
    assert (first["pid"], first["index"], second["pid"], second["index"]) == (32, 0, 31, 1)
    assert [gray_level(f) for f in first["frames"]] == [5, 15, 25, 25, 25]
    assert [gray_level(f) for f in second["frames"]] == [levels[i] for i in (1, 3, 5, 7, 9)]
    assert torch.equal(second["text_ids"], tokenizer(["标题|配文"], 90)[0][0])  # no dropout at eval
    assert torch.equal(ds[1]["frames"], second["frames"])  # deterministic

    batch = collate_eval([first, second])
    assert batch["frames"].shape == (2, T, 3, SIZE, SIZE)
    assert batch["text_ids"].shape == batch["text_mask"].shape == (2, 90)
    assert batch["pid"].tolist() == [32, 31] and batch["index"].tolist() == [0, 1]


def test_an_unreadable_eval_item_in_a_loader_worker_is_one_line_with_exit_code_2(tmp_path, capsys):
    from torch.utils.data import DataLoader

    from engine.checks import run_cli

    paths = DatasetPaths(tmp_path)
    add_goods(paths, 2, 20, image="corrupt")
    list_path = paths.gallery_list("video2goods")
    write_list(list_path, [(2, "goods", "q", "2/2.jpg", "2/2.txt")])
    loader = DataLoader(eval_dataset(paths, list_path), num_workers=1, collate_fn=collate_eval)
    with pytest.raises(UnreadableImage) as err:  # not the RuntimeError of an exception that cannot be rebuilt
        next(iter(loader))
    assert err.value.path == paths.image_path(2)
    assert err.value.reason.endswith(f"item 2 of {list_path}. Set data.skip_unreadable_eval=true to use a black "
                                     "frame instead")
    assert run_cli(lambda: next(iter(loader))) == 2
    assert capsys.readouterr().err == f"error: {err.value}\n"


def test_unreadable_eval_item_is_an_error_unless_skipping(tmp_path):
    paths = DatasetPaths(tmp_path)
    add_goods(paths, 1, 10)
    add_goods(paths, 2, 20, image="corrupt")
    add_goods(paths, 3, 30, image="missing")
    list_path = paths.gallery_list("video2goods")
    write_list(list_path, [(p, "goods", "q", f"{p}/{p}.jpg", f"{p}/{p}.txt") for p in (1, 2, 3)])

    strict = eval_dataset(paths, list_path)
    assert gray_level(strict[0]["frames"][0]) == 10
    for index, pid in ((1, 2), (2, 3)):
        with pytest.raises(UnreadableImage, match=f"{pid}.jpg.*skip_unreadable_eval"):
            strict[index]

    lenient = eval_dataset(paths, list_path, skip_unreadable=True)
    black = (-MEAN / STD).expand(3, SIZE, SIZE)
    for index in (1, 2):
        item = lenient[index]
        assert item["frames"].shape == (1, 3, SIZE, SIZE)
        assert torch.allclose(item["frames"][0], black, atol=1e-5)
    assert lenient.stats()["black_frames"] == 2
    assert len(lenient) == 3

    os.remove(paths.text_path("goods", 1))
    with pytest.raises(FileNotFoundError, match="1.txt"):
        strict[0]
    assert lenient[0]["text_mask"].sum() == 2 and lenient.stats()["empty_texts"] == 1
    # a title of zero-width characters only reads as an empty text: counted too
    write_text(paths.text_path("goods", 1), ["1", "类目", "品牌", "实体", "\u200b\u200d", "描述"])
    assert lenient[0]["text_mask"].sum() == 2 and lenient.stats()["empty_texts"] == 2


def test_eval_raw_videos_decode_centres_and_missing_ones_follow_the_skip_rule(tmp_path, gray_video):
    paths = DatasetPaths(tmp_path)
    levels = [20 * k + 10 for k in range(10)]
    for pid in (41, 42):
        add_video(paths, pid, levels)
    os.makedirs(os.path.dirname(paths.raw_video_path(41)))
    gray_video(paths.raw_video_path(41), levels)
    list_path = paths.gallery_list("goods2video")
    write_list(list_path, [(pid, "video", "q", f"{pid}/{pid}_0.jpg", f"{pid}/{pid}.txt") for pid in (41, 42)])

    strict = eval_dataset(paths, list_path, frame_source="raw")
    decoded = [gray_level(f) for f in strict[0]["frames"]]
    assert all(abs(a - levels[i]) <= 4 for a, i in zip(decoded, (1, 3, 5, 7, 9)))
    with pytest.raises(UnreadableImage, match="42.mp4"):
        strict[1]
    lenient = eval_dataset(paths, list_path, frame_source="raw", skip_unreadable=True)
    assert lenient[1]["frames"].shape == (T, 3, SIZE, SIZE) and lenient.stats()["black_frames"] == T


# ---- end to end on the generated mini dataset ----

def mini_cfg(root, *overrides):
    return load_config(os.path.join(REPO_ROOT, "configs", "base.yaml"), [
        f"data.root={root}", "data.image_size=32", "data.num_frames=3", "train.batch_size=4",
        "data.num_workers=0", *overrides])


def test_train_loader_on_mini_dataset(mini_root):
    cfg = mini_cfg(mini_root)
    loader, sampler = build_train_loader(cfg, rank=0, world_size=1)
    sampler.set_epoch(1)
    batches = list(loader)
    assert len(batches) == len(loader) == len(sampler) > 0
    queries = parse_train_file(DatasetPaths(mini_root).train_file)
    for batch in batches:
        assert set(batch) == {"query_ids", "query_mask", "frames", "text_ids", "text_mask", "domain", "pids",
                              "query_index", "epoch"}
        assert batch["epoch"] == 1
        t = 3 if batch["domain"] == "video" else 1
        assert batch["frames"].shape == (4, t, 3, 32, 32) and batch["frames"].dtype == torch.float32
        assert batch["query_ids"].shape == batch["query_mask"].shape == (4, 20)
        assert batch["text_ids"].shape == batch["text_mask"].shape == (4, 90)
        for key in ("query_ids", "query_mask", "text_ids", "text_mask", "pids", "query_index"):
            assert batch[key].dtype == torch.long, key
        for q, pid in zip(batch["query_index"].tolist(), batch["pids"].tolist()):
            entry = queries[q]
            assert pid in (entry.goods if batch["domain"] == "goods" else entry.videos)
    assert {b["domain"] for b in batches} == {"goods", "video"}
    assert loader.dataset.raw_counts()["unreadable_images"] == 0


def test_train_loader_workers_share_counts_and_match_single_process(mini_root):
    single, sampler = build_train_loader(mini_cfg(mini_root), 0, 1)
    workers, _ = build_train_loader(mini_cfg(mini_root, "data.num_workers=2"), 0, 1)
    for a, b in zip(single, workers):  # per-sample seeds: the same batches whichever worker loads them
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["text_ids"], b["text_ids"])
    stats = workers.dataset.raw_counts()
    # every sample tokenizes one query and one text, in whichever worker
    assert workers.dataset.query_tokenizer.counts["texts"] == workers.dataset.text_tokenizer.counts["texts"]
    assert workers.dataset.text_tokenizer.counts["texts"] == 4 * len(sampler)
    assert stats["empty_texts"] == single.dataset.raw_counts()["empty_texts"]


def test_raw_video_decoding_matches_the_frame_images(mini_root):
    paths = DatasetPaths(mini_root)
    raw = sorted(os.path.join(d, f) for d, _, fs in os.walk(paths.roots["raw_videos"]) for f in fs)
    assert raw
    pid = int(os.path.splitext(os.path.basename(raw[0]))[0])
    names = read_frame_ids(paths.frameid_path(pid))
    decoded = decode_video(paths.raw_video_path(pid), 5)
    images = torch.stack([load_image(os.path.join(paths.images_dir("video"), names[i]))
                          for i in segment_indices(len(names), 5)])
    assert decoded.shape == images.shape
    assert (decoded.float() - images.float()).abs().mean() < 12  # the same frames, through a lossy codec

    ds = train_dataset(paths, [TrainEntry("q", [], [pid])], num_frames=3, image_size=32,
                       frame_source="raw")
    assert ds[TrainSample(0, 0, "video", pid)]["frames"].shape == (3, 3, 32, 32)
    assert ds.raw_counts()["unreadable_images"] == 0


def test_eval_datasets_on_mini_dataset(mini_root):
    cfg = mini_cfg(mini_root)
    paths = DatasetPaths(mini_root)
    for direction in ("video2goods", "goods2video"):
        for list_path in (paths.query_list(direction), paths.gallery_list(direction)):
            ds = build_eval_dataset(cfg, list_path)
            items = parse_item_list(list_path)
            assert len(ds) == len(items)
            loader = torch.utils.data.DataLoader(ds, batch_size=16, collate_fn=collate_eval)
            pids, indices = [], []
            for batch in loader:
                t = 3 if items[0].domain == "video" else 1
                assert batch["frames"].shape[1:] == (t, 3, 32, 32)
                assert batch["text_ids"].shape[1] == 90
                pids += batch["pid"].tolist()
                indices += batch["index"].tolist()
            assert pids == [item.pid for item in items] and indices == list(range(len(items)))
            assert ds.stats()["black_frames"] == 0


def test_pretrain_loader_gives_every_item_once_per_epoch(mini_root):
    cfg = mini_cfg(mini_root)
    loader, sampler = build_pretrain_loader(cfg, rank=0, world_size=1)
    queries = parse_train_file(DatasetPaths(mini_root).train_file)
    items = {("goods", p) for q in queries for p in q.goods} | {("video", p) for q in queries for p in q.videos}
    sampler.set_epoch(2)
    seen = []
    for batch in loader:
        assert batch["epoch"] == 2
        seen += [(batch["domain"], pid) for pid in batch["pids"].tolist()]
        # the text is the item's own: its query is one that lists it
        for q, pid in zip(batch["query_index"].tolist(), batch["pids"].tolist()):
            assert pid in (queries[q].goods if batch["domain"] == "goods" else queries[q].videos)
    assert len(seen) == len(set(seen))
    per_domain = {d: sum(1 for dom, _ in items if dom == d) for d in ("goods", "video")}
    # each domain loses at most a batch's remainder
    for d, n in per_domain.items():
        assert n - 4 < sum(1 for dom, _ in seen if dom == d) <= n
