"""The run checks of --check (engine/checks.py, utils/config.py): each bad setting is one line naming the key, its
value and what is expected, found before any process group or model exists."""
import os
import shutil

import pytest
import torch

import main_cross_domain_emb as entry
from engine import checks
from engine.checks import preflight, validate_config
from utils.checkpoint import LATEST
from utils.config import ConfigError, load_config
from tests.helpers import REPO_ROOT, family_cfg

DEMO = os.path.join(REPO_ROOT, "configs", "demo.yaml")


def demo(mini_root, tmp_path, *overrides):
    return load_config(DEMO, [f"data.root={mini_root}", f"output_dir={tmp_path / 'run'}", *overrides])


def checked(cfg, evaluate=False):
    validate_config(cfg, evaluate)
    preflight(cfg, evaluate)


@pytest.mark.parametrize("evaluate", [False, True])
def test_a_good_config_passes(mini_root, tmp_path, evaluate):
    checked(demo(mini_root, tmp_path), evaluate)


@pytest.mark.parametrize("override, message", [
    ("data.num_frames=0", "data.num_frames=0: expected an integer >= 1"),
    ("loss.temperature=0", r"loss.temperature=0.0: expected a temperature > 0"),
    ("model.video.ftt_heads=3", "model.video.ftt_heads=3: expected a divisor of model.embed_dim=64"),
    ("model.video.ftt_heads=0", "model.video.ftt_heads=0: expected an integer >= 1"),
    ("data.num_workers=-1", "data.num_workers=-1: expected an integer >= 0"),
    ("data.crop_scale=[0.9, 0.5]", r"data.crop_scale=\[0.9, 0.5\]: expected a pair \[a, b\] with 0 < a <= b <= 1"),
    ("data.crop_scale=[0.0, 1.0]", r"data.crop_scale=\[0.0, 1.0\]: expected a pair"),
    ("data.crop_scale=[0.5]", r"data.crop_scale=\[0.5\]: expected a pair"),
    ("model.embed_dim=0", "model.embed_dim=0: expected an integer >= 1"),
    ("eval.batch_size=0", "eval.batch_size=0: expected an integer >= 1"),
    ("data.text_max_len=600", "data.text_max_len=600: expected at most 512, the position table of "
                              "model.backbone.text_model=RoBERTa-wwm-ext-base-chinese"),
    ("data.query_max_len=513", "data.query_max_len=513: expected at most 512"),
    ("data.query_max_len=2", "data.query_max_len=2: expected an integer >= 3"),
    ("loss.weights.qt=-1.0", "loss.weights.qt=-1.0: expected a loss weight >= 0"),
    ("pretrain.weights.epl=-0.5", "pretrain.weights.epl=-0.5: expected a loss weight >= 0"),
    ("data.image_size=36", "data.image_size=36: expected a multiple of the vision patch size 8"),
    ("eval.page_topk=0", "eval.page_topk=0: expected an integer >= 1"),
    ("eval.topk=[]", r"eval.topk=\[\]: expected a non-empty list of integers >= 1"),
    ("eval.topk=[0, 10]", r"eval.topk=\[0, 10\]: expected a non-empty list"),
    ("eval.topk=10", r"eval.topk=10: expected a non-empty list of integers >= 1, or null for R@K at K = 1, 5, 10, 20, "
                     r"50, 100$"),
    ("eval.topk=[true]", r"eval.topk=\[True\]: expected a non-empty list"),
])
def test_a_value_out_of_range_is_one_line_naming_it(mini_root, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as e:
        validate_config(demo(mini_root, tmp_path, override))
    assert "\n" not in str(e.value)


def test_the_text_position_table_follows_the_overrides(mini_root, tmp_path):
    cfg = demo(mini_root, tmp_path, "data.text_max_len=40",
               "model.backbone.overrides.text_max_position_embeddings=32")
    with pytest.raises(ConfigError, match="data.text_max_len=40: expected at most 32"):
        validate_config(cfg)


@pytest.mark.parametrize("overrides, message", [
    (["eval.ivf_pq.nlist=0"], "eval.ivf_pq.nlist=0: expected an integer >= 1"),
    (["eval.ivf_pq.m=48"], "eval.ivf_pq.m=48: expected a divisor of model.embed_dim=64"),
])
def test_ivf_pq_settings_out_of_range(mini_root, tmp_path, overrides, message):
    cfg = demo(mini_root, tmp_path, "eval.index=ivf_pq", *overrides)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg, evaluate=True)


@pytest.mark.parametrize("overrides", [["eval.ivf_pq.nlist=4"], ["eval.ivf_pq.nlist=100"],
                                       ["eval.ivf_pq.nlist=4", "eval.ivf_pq.train_rows=10"]])
def test_ivf_pq_that_faiss_cannot_train_on_the_gallery_is_refused(mini_root, tmp_path, overrides):
    # the mini gallery has 60 items: fewer than nlist or than the 256 points of a sub-quantizer's k-means
    cfg = demo(mini_root, tmp_path, "eval.index=ivf_pq", "eval.ivf_pq.m=8", *overrides)
    validate_config(cfg, evaluate=True)
    with pytest.raises(ConfigError, match=r"eval.ivf_pq: nlist=\d+, train_rows=\d+ on a gallery of 60 items .* "
                                          r"expected at least \d+") as e:
        preflight(cfg, evaluate=True)
    assert "\n" not in str(e.value)


def test_topk_above_the_gallery_size_warns(mini_root, tmp_path, monkeypatch):
    warned = []

    class Log:
        def warning(self, message, *args):
            warned.append(message % args)

    monkeypatch.setattr(checks, "log", Log())
    preflight(demo(mini_root, tmp_path, "eval.topk=[10, 100]"), evaluate=True)
    assert len(warned) == 1 and "eval.topk=[10, 100]: K above the 60 items of the gallery" in warned[0]
    warned.clear()
    preflight(demo(mini_root, tmp_path, "eval.topk=[10, 50]"), evaluate=True)
    assert warned == []
    preflight(demo(mini_root, tmp_path), evaluate=True)  # the default K go up to 100
    assert warned == ["warning: eval.topk=null (K = 1, 5, 10, 20, 50, 100): K above the 60 items of the gallery "
                      f"({mini_root}/test_file/video2goods_gallery.txt) counts every item as found"]


def test_check_ends_with_one_line_and_exit_code_2(mini_root, tmp_path, capsys):
    code = entry.main(["--config", DEMO, "--check", f"data.root={mini_root}", f"output_dir={tmp_path}",
                       "loss.temperature=0"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == ["config error: loss.temperature=0.0: expected a "
                                                            "temperature > 0"]


# ----------------------------------------------------------------------------- duplicated YAML keys

def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_key_set_twice_names_the_file_and_both_lines(tmp_path):
    path = write(tmp_path / "twice.yaml", f"_base_: {DEMO}\ndata:\n  num_frames: 3\n  image_size: 32\n"
                                          "  num_frames: 4\n")
    with pytest.raises(ConfigError, match=rf"{path}: key 'num_frames' is set twice, on lines 3 and 5"):
        load_config(path)


def test_a_key_set_twice_in_a_base_file_names_that_file(tmp_path):
    base = write(tmp_path / "base.yaml", f"_base_: {DEMO}\nseed: 1\nseed: 2\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\ndata:\n  num_frames: 4\n")
    with pytest.raises(ConfigError, match=rf"{base}: key 'seed' is set twice, on lines 2 and 3"):
        load_config(child)


def test_a_key_set_again_in_a_later_file_is_an_override(tmp_path):
    base = write(tmp_path / "base.yaml", f"_base_: {DEMO}\nseed: 1\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\nseed: 2\n")
    assert os.path.isfile(base) and load_config(child)["seed"] == 2


# ----------------------------------------------------------------------------- English families' files

@pytest.fixture(scope="module")
def clip_folder(family_weights):
    return family_weights("clip")


def clip_cfg(folder, mini_root, tmp_path, *overrides):
    return family_cfg("clip", folder, f"data.root={mini_root}", f"output_dir={tmp_path / 'run'}", *overrides)


def test_a_malformed_translation_table_names_file_and_line(clip_folder, mini_root, tmp_path):
    table = write(tmp_path / "table.tsv", "红色连衣裙\tred dress\n蓝色\n")
    good = write(tmp_path / "good.tsv", "红色连衣裙\tred dress\n")
    checked(clip_cfg(clip_folder, mini_root, tmp_path, f"data.translations={good}"))
    cfg = clip_cfg(clip_folder, mini_root, tmp_path, f"data.translations={table}")
    validate_config(cfg)
    with pytest.raises(ValueError, match=rf"{table}:2: expected 'chinese text<TAB>english text'"):
        preflight(cfg)


TOKENIZER_NAMES = ("tokenizer.json", "vocab.json", "merges.txt")


def clip_copy(clip_folder, tmp_path, removed, added=()):
    """A copy of the tiny CLIP folder without the files `removed`, with empty files `added`."""
    folder = tmp_path / "clip"
    shutil.copytree(clip_folder, folder)
    for name in removed:
        if (folder / name).exists():
            (folder / name).unlink()
    for name in added:
        (folder / name).write_text("{}", encoding="utf-8")
    return str(folder)


@pytest.mark.parametrize("removed, added, message", [
    (TOKENIZER_NAMES, (), "no tokenizer files"), (TOKENIZER_NAMES, ("vocab.json",), "no tokenizer files"),
    (("model.safetensors", "pytorch_model.bin"), (), "no weights"),
])
def test_a_baseline_folder_without_tokenizer_or_weights_is_refused(clip_folder, mini_root, tmp_path, removed, added,
                                                                     message):
    folder = clip_copy(clip_folder, tmp_path, removed, added)
    cfg = clip_cfg(folder, mini_root, tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"model.backbone.pretrained={folder}: {message}") as e:
        preflight(cfg)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("added", [("tokenizer.json",), ("vocab.json", "merges.txt")])
def test_either_tokenizer_format_is_enough(clip_folder, mini_root, tmp_path, added):
    preflight(clip_cfg(clip_copy(clip_folder, tmp_path, TOKENIZER_NAMES, added), mini_root, tmp_path))


# ----------------------------------------------------------------------------- checkpoints' configs

def fake_checkpoint(path, cfg, legacy=False):
    """A file holding `cfg` as a training checkpoint stores it (the tensors do not matter to the check)."""
    torch.save({"config": cfg, "model": {"w": torch.zeros(2)}}, str(path), _use_new_zipfile_serialization=not legacy)
    return str(path)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_resumed_checkpoint_of_other_settings_is_one_line_listing_them(mini_root, tmp_path, legacy):
    ckpt = fake_checkpoint(tmp_path / "old.pth.tar", demo(mini_root, tmp_path, "train.weight_decay=0.5"), legacy)
    checked(demo(mini_root, tmp_path, f"resume={ckpt}", "train.weight_decay=0.5", "train.max_steps=7"))
    with pytest.raises(ConfigError, match=r"was written by a run with other settings: train.weight_decay: 0.5 -> 0.0\. "
                                          "Pick another output_dir, or pass resume=null") as e:
        checked(demo(mini_root, tmp_path, f"resume={ckpt}"))
    assert "\n" not in str(e.value)


def test_resume_auto_compares_the_latest_checkpoint(mini_root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    fake_checkpoint(run / LATEST, demo(mini_root, tmp_path, "loss.weights.qt=2.0"))
    checked(demo(mini_root, tmp_path, "loss.weights.qt=2.0"))
    with pytest.raises(ConfigError, match=r"checkpoint_latest.pth.tar was written by a run with other settings: "
                                          r"loss.weights.qt: 2.0 -> 1.0\. Pick another"):
        checked(demo(mini_root, tmp_path))


def test_an_evaluated_checkpoint_of_another_model_is_refused(mini_root, tmp_path):
    ckpt = fake_checkpoint(tmp_path / "old.pth.tar", demo(mini_root, tmp_path, "model.embed_dim=32",
                                                         "data.num_frames=4", "train.lr=0.5"))
    checked(demo(mini_root, tmp_path, f"eval.checkpoint={ckpt}", "model.embed_dim=32", "data.num_frames=4"),
            evaluate=True)  # training settings do not matter to an evaluation
    with pytest.raises(ConfigError, match=rf"eval.checkpoint={ckpt} was trained with other model or input settings: "
                                          r"data.num_frames: 4 -> 3; model.embed_dim: 32 -> 64\.") as e:
        checked(demo(mini_root, tmp_path, f"eval.checkpoint={ckpt}"), evaluate=True)
    assert "\n" not in str(e.value)
