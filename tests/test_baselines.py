"""The pieces of the Table 2 baselines that do not depend on a backbone family: the translation table, the
goods-video pair sampler and its collate, the contrastive loss with rows left out, the settings' rules,
the fifteen configs and scripts/run_table2.sh."""
import glob
import os
import random
import subprocess

import pytest
import torch
import torch.nn.functional as F

from datasets.annotations import TrainEntry
from datasets.families import FAMILIES
from datasets.loader import collate_pairs
from datasets.sampler import PairBatchSampler
from datasets.translations import TranslationError, Translations, read_translations
from engine.checks import validate_config
from evaluate.table import FAMILY_NAMES, MODE_NAMES, PAPER_TABLES, table2_row_name
from losses import QueryContrastiveLoss
from tests.helpers import REPO_ROOT as REPO
from utils.config import ConfigError, load_config

BASELINES = os.path.join(REPO, "configs", "baselines")
ROWS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(BASELINES, "[!_]*.yaml")))


# ----------------------------------------------------------------------------- translations


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_translation_table_reads_pairs_and_names_bad_lines(tmp_path):
    good = write(tmp_path / "t.tsv", "\ufeff连衣裙\tdress\n\n 雨伞 \t umbrella \n连衣裙\tdress\n")
    assert read_translations(good) == {"连衣裙": "dress", "雨伞": "umbrella"}
    cases = {"no_tab.tsv": ("连衣裙 dress\n", ":1:"), "empty.tsv": ("a\tb\n连衣裙\t \n", ":2:"),
             "three.tsv": ("a\tb\tc\n", ":1:"), "twice.tsv": ("连衣裙\tdress\n雨伞\tumbrella\n连衣裙\tgown\n", ":3:")}
    for name, (text, where) in cases.items():
        with pytest.raises(TranslationError, match=where):
            read_translations(write(tmp_path / name, text))
    with pytest.raises(TranslationError, match="not found"):
        read_translations(str(tmp_path / "absent.tsv"))


def test_untranslated_texts_follow_the_per_field_rule_and_are_counted(tmp_path):
    t = Translations(write(tmp_path / "t.tsv", "连衣裙\tdress\n红色\tred\n新款\tnew\n"))
    assert t.query(" 连衣裙 ") == "dress"
    assert t.query("雨伞") == "雨伞"  # a query without an entry stays
    assert t.item_fields("goods", {"title": "连衣裙", "brand": "某"}) == {"title": "dress", "brand": "某"}
    assert t.item_fields("goods", {"title": "雨伞"})["title"] == ""  # Chinese left: left out
    assert t.item_fields("goods", {"title": "Nike 42"})["title"] == "Nike 42"  # no Chinese: kept
    video = t.item_fields("video", {"title": "红色", "text": "新款 雨伞", "caption": None})
    assert video == {"title": "red", "text": None, "caption": None}
    assert t.counts.as_dict() == {"untranslated_queries": 1, "untranslated_texts": 2}


# ----------------------------------------------------------------------------- pairs


def make_entries(n, seed=0):
    """n queries: a third goods only, a third videos only, a third both."""
    rng = random.Random(seed)
    entries = []
    for i in range(n):
        goods = [] if i % 3 == 1 else [10 * i + k for k in range(rng.randint(1, 3))]
        videos = [] if i % 3 == 0 else [10 * i + 5 + k for k in range(rng.randint(1, 3))]
        entries.append(TrainEntry(f"q{i}", goods, videos))
    return entries


def rank_batches(entries, batch_size, rank, world_size, epoch=0):
    sampler = PairBatchSampler(entries, batch_size, rank, world_size, seed=1)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_pair_sampler_gives_each_query_with_both_domains_one_pair_per_epoch():
    entries = make_entries(301)
    sampler = PairBatchSampler(entries, 8, 0, 1, seed=1)
    assert sampler.skipped_queries == sum(1 for e in entries if not (e.goods and e.videos)) == 201
    out = rank_batches(entries, 8, 0, 1)
    assert len(out) == 100 // 8
    seen = []
    for batch in out:
        goods, videos = batch[:8], batch[8:]
        assert [s.domain for s in goods] == ["goods"] * 8 and [s.domain for s in videos] == ["video"] * 8
        for g, v in zip(goods, videos):
            assert g.query_index == v.query_index
            assert g.pid in entries[g.query_index].goods and v.pid in entries[v.query_index].videos
        seen += [g.query_index for g in goods]
    assert len(seen) == len(set(seen)) == 96
    assert rank_batches(entries, 8, 0, 1, epoch=1) != out


def test_pair_batches_of_two_ranks_make_the_single_process_batch():
    entries = make_entries(301)
    one = rank_batches(entries, 8, 0, 1)
    r0, r1 = rank_batches(entries, 4, 0, 2), rank_batches(entries, 4, 1, 2)
    for whole, a, b in zip(one, r0, r1):
        strip = lambda samples: [(s.query_index, s.domain, s.pid) for s in samples]  # noqa: E731
        assert strip(whole[:8]) == strip(a[:4] + b[:4]) and strip(whole[8:]) == strip(a[4:] + b[4:])


def test_pair_sampler_needs_one_global_batch_of_pairs():
    with pytest.raises(ValueError, match="train.mode=ft: 3 queries"):
        PairBatchSampler(make_entries(9), 2, 0, 2)


def test_collate_pairs_marks_rows_that_are_no_longer_pairs():
    def sample(domain, query_index, value):
        t = 1 if domain == "goods" else 3
        return {"frames": torch.full((t, 3, 4, 4), value), "text_ids": torch.tensor([value]),
                "text_mask": torch.tensor([1]), "query_index": query_index, "epoch": 0}

    batch = collate_pairs([sample("goods", 1, 1.0), sample("goods", 2, 2.0),
                           sample("video", 1, 3.0), sample("video", 7, 4.0)])  # the second video was replaced
    assert batch["pair_valid"].tolist() == [True, False]
    assert batch["frames"].shape == (2, 1, 3, 4, 4) and batch["video_frames"].shape == (2, 3, 3, 4, 4)
    assert batch["video_text_ids"].tolist() == [[3], [4]]


# ----------------------------------------------------------------------------- loss


@pytest.mark.parametrize("symmetric", [False, True])
def test_contrastive_loss_leaves_invalid_rows_out_as_anchors_only(symmetric):
    torch.manual_seed(0)
    q, x = torch.randn(5, 8), torch.randn(5, 8)
    valid = torch.tensor([True, False, True, True, False])
    loss = QueryContrastiveLoss(temperature=0.1, symmetric=symmetric)(q, x, valid=valid)
    logits = 10.0 * F.normalize(q, dim=-1) @ F.normalize(x, dim=-1).t()
    rows = [0, 2, 3]
    expected = sum(-torch.log_softmax(logits[i], 0)[i] for i in rows) / 3
    if symmetric:
        expected = (expected + sum(-torch.log_softmax(logits[:, i], 0)[i] for i in rows) / 3) / 2
    torch.testing.assert_close(loss, expected)


def test_contrastive_loss_without_a_valid_row_is_zero_with_gradients():
    q = torch.randn(3, 4, requires_grad=True)
    module = QueryContrastiveLoss()
    loss = module(q, torch.randn(3, 4), valid=torch.zeros(3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0 and torch.equal(q.grad, torch.zeros_like(q)) and module.logit_scale.grad is not None


# ----------------------------------------------------------------------------- settings and configs


def test_settings_that_cannot_run_are_refused(tmp_path):
    base = os.path.join(BASELINES, "clip_q.yaml")
    cases = [
        (os.path.join(BASELINES, "clip_ft.yaml"), ["loss.recon=true"], False, "loss.recon=false"),
        (os.path.join(BASELINES, "clip_infer.yaml"), [], False, "nothing to train"),
        (os.path.join(BASELINES, "chinese_clip_q.yaml"), [f"data.translations={tmp_path}/t.tsv"], False,
         "English-text families"),
        (base, ["model.fusion.type=fusion"], False, "add or combiner"),
        (base, ["task=pretrain"], False, "chinese_clip family only"),
        (os.path.join(BASELINES, "chinese_clip_ft.yaml"), ["task=pretrain", "model.fusion.type=fusion"], False,
         "retrieval setting"),
        (base, ["model.family=openclip"], False, "expected one of"),
        (base, ["train.mode=zero_shot"], False, "expected one of"),
    ]
    for path, extra, evaluate, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate_config(load_config(path, extra), evaluate)
    validate_config(load_config(os.path.join(BASELINES, "clip_infer.yaml")), evaluate=True)


def test_fifteen_rows_one_per_family_and_setting_named_as_in_the_paper():
    """The paper's fifteen rows, and COPE's ft and Q rows, which the paper does not have."""
    assert set(FAMILY_NAMES) == set(FAMILIES)
    seen = set()
    paper_rows = {name.split(" [")[0] for name in PAPER_TABLES["Table 2"]}
    for row in ROWS:
        cfg = load_config(os.path.join(BASELINES, f"{row}.yaml"))
        family, mode = cfg["model"]["family"], cfg["train"]["mode"]
        assert row == f"{family}_{'q' if mode == 'query' else mode}"
        assert (table2_row_name(family, mode) in paper_rows) is (family != "cope")
        validate_config(cfg, evaluate=mode == "infer")
        assert cfg["output_dir"].endswith(os.path.join("table2", row))
        assert (cfg["data"]["translations"] is None) == (family in ("chinese_clip", "cope"))
        seen.add((family, mode))
    assert seen == {(f, m) for f in FAMILIES if f != "cope" for m in MODE_NAMES} | {("cope", "ft"), ("cope", "query")}


def test_q_rows_are_the_chinese_clip_q_row_on_other_towers():
    """Every -Q row of the paper has the switches of configs/ablations/table3_base.yaml (the ChineseCLIP-Q row);
    COPE-Q has COPE's own heads and losses."""
    reference = load_config(os.path.join(REPO, "configs", "ablations", "table3_base.yaml"))
    for family in set(FAMILIES) - {"cope"}:
        cfg = load_config(os.path.join(BASELINES, f"{family}_q.yaml"))
        for section in ("video", "fusion", "recon"):
            assert cfg["model"][section] == reference["model"][section]
        assert cfg["loss"] == reference["loss"] and cfg["train"] == reference["train"]


def run_table2(*args):
    return subprocess.run(["sh", os.path.join(REPO, "scripts", "run_table2.sh"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_run_table2_dry_run_prints_the_commands_of_the_whole_table():
    result = run_table2("--dry-run", "data.root=/somewhere")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = [line.split()[1] for line in lines if line.startswith("== ")]
    assert len(rows) == 15 and rows[:5] == ["ChineseCLIP-infer", "CLIP-infer", "CyCLIP-infer", "FashionCLIP-infer",
                                           "XCLIP-infer"]
    trains = [line for line in lines if "/train.sh " in line]
    evals = [line for line in lines if "_evaluate.sh " in line]
    assert len(trains) == 10 and len(evals) == 30 and all(" null " in e for e in evals if "_infer.yaml" in e)
    assert all(line.endswith("data.root=/somewhere") for line in trains + evals)
    tables = [line for line in lines if " table " in line]
    assert len(tables) == 15 and "--name CLIP-ft" in "\n".join(tables)


def test_run_table2_selects_rows_and_rejects_unknown_ones():
    result = run_table2("--dry-run", "xclip", "ft")
    rows = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("== ")]
    assert rows == ["XCLIP-infer", "ChineseCLIP-ft", "CLIP-ft", "CyCLIP-ft", "FashionCLIP-ft", "XCLIP-ft", "XCLIP-Q"]
    bad = run_table2("--dry-run", "clip_zero")
    assert bad.returncode == 2 and "unknown row 'clip_zero'" in bad.stderr


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_weights_stop_the_launch_before_torchrun(family, tmp_path, mini_root):
    """A row whose weights are not at its config's path fails in train.sh's check, naming where they are published."""
    result = subprocess.run(["sh", os.path.join(REPO, "train.sh"), os.path.join(BASELINES, f"{family}_ft.yaml"),
                             f"data.root={mini_root}", f"output_dir={tmp_path}/out",
                             f"model.backbone.pretrained={tmp_path}/absent"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"model.backbone.pretrained={tmp_path}/absent" in result.stderr and "not found" in result.stderr
    assert ("hf download" in result.stderr) is (family in ("clip", "fashionclip", "xclip", "cope"))
    assert "torch.distributed" not in result.stderr and not os.path.exists(tmp_path / "out")
