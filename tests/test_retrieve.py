"""`evaluation.py retrieve` and evaluate.retrieve on the mini set: a checkpoint of a tiny model, its
evaluation's features, and the Python API encoding the same items and queries as the extraction did."""
import os

import numpy as np
import pytest
import torch

import evaluation
from datasets.annotations import DatasetPaths, parse_gt, parse_item_list, read_goods_text, read_video_text
from datasets.text import goods_title, video_text
from evaluate import pipeline
from evaluate.retrieve import ForeignFeatures
from tests.helpers import REPO_ROOT, TINY

DEMO = os.path.join(REPO_ROOT, "configs", "demo.yaml")
TINY_TEXT_MAX_LEN = next(int(o.split("=")[1]) for o in TINY if o.startswith("data.text_max_len="))


def _save_checkpoint(cfg, path, scale=1.0):
    """A training checkpoint of the tiny model of `cfg` (random weights, times `scale`), its config inside."""
    from models import build_model
    from utils.checkpoint import TrainingCheckpoint
    from utils.seed import seed_model_init

    seed_model_init(cfg["seed"])
    state = {k: v * scale if v.is_floating_point() else v for k, v in build_model(cfg).state_dict().items()}
    torch.save(TrainingCheckpoint(model=state, optimizer={}, scaler={}, scheduler={}, epoch=0, step_in_epoch=0,
                                  global_step=0, rng=[], config=cfg, world_size=1, batch_size=1,
                                  epoch_lengths=[]).as_dict(), path)
    return str(path)


def _overrides(mini_root, out):
    # queries as long as item texts: the query tower then encodes a text as the item text tower does
    return [f"data.root={mini_root}", f"output_dir={out}", *TINY, f"data.query_max_len={TINY_TEXT_MAX_LEN}",
            "eval.page_queries=0", "eval.dtype=float32"]


@pytest.fixture(scope="module")
def run(mini_root, tmp_path_factory):
    """(checkpoint, output_dir) of the tiny model with the features and rankings of both directions."""
    from utils.config import load_config

    out = tmp_path_factory.mktemp("retrieve_run")
    overrides = _overrides(mini_root, out)
    checkpoint = _save_checkpoint(load_config(DEMO, overrides), out / "checkpoint_latest.pth.tar")
    torch.set_num_threads(1)
    for direction, feature in (("video2goods", "all"), ("goods2video", "fused")):
        pipeline.evaluate_direction(load_config(DEMO, [*overrides, f"eval.checkpoint={checkpoint}",
                                                       f"eval.direction={direction}", f"eval.feature={feature}"]))
    return checkpoint, out


def _retrieve(capsys, *argv):
    """[(id, score)] printed by `evaluation.py retrieve`."""
    capsys.readouterr()
    assert evaluation.main(["retrieve", *argv]) == 0
    return [(int(pid), float(score)) for pid, score in
            (line.split("\t") for line in capsys.readouterr().out.splitlines())]


def _item(paths, list_path, index=0, with_file=False):
    """(image paths, text as the evaluation dataset composes it, pid[, text file]) of a test list's item."""
    item = parse_item_list(list_path)[index]
    images = [os.path.join(paths.images_dir(item.domain), f) for f in item.frames]
    text_path = os.path.join(paths.text_dir(item.domain), item.text_path)
    text = goods_title(read_goods_text(text_path)) if item.domain == "goods" else video_text(read_video_text(text_path))
    return (images, text, item.pid, text_path) if with_file else (images, text, item.pid)


@pytest.mark.parametrize("direction,domain", [("video2goods", "goods"), ("goods2video", "video")])
def test_a_gallery_item_retrieves_itself_at_rank_1(run, mini_root, capsys, direction, domain):
    checkpoint, out = run
    paths = DatasetPaths(mini_root)
    images, text, pid = _item(paths, paths.gallery_list(direction), index=3)
    assert (len(images) > 1) == (domain == "video")  # a micro-video is given by all its frames
    gallery = str(out / "eval" / direction / "fused" / "gallery")
    hits = _retrieve(capsys, checkpoint, "--gallery", gallery, "--item", ",".join(images), "--text", text,
                     "--topk", "5")
    assert len(hits) == 5 and hits[0][0] == pid
    assert hits[0][1] == pytest.approx(1.0, abs=1e-3)
    assert hits[1][1] < hits[0][1]


@pytest.mark.parametrize("direction", ["video2goods", "goods2video"])
def test_an_item_given_by_its_text_file_reads_it_as_the_evaluation_does(run, mini_root, capsys, direction):
    """--text-file: the item's text file read by the evaluation's rule, not the whole file as one text."""
    checkpoint, out = run
    paths = DatasetPaths(mini_root)
    images, text, pid, text_path = _item(paths, paths.gallery_list(direction), index=5, with_file=True)
    with open(text_path, encoding="utf-8") as f:
        assert f.read().strip() != text  # the file holds more lines than the text the model reads
    gallery = str(out / "eval" / direction / "fused" / "gallery")
    from_file = _retrieve(capsys, checkpoint, "--gallery", gallery, "--item", ",".join(images), "--text-file",
                          text_path, "--topk", "3")
    assert from_file == _retrieve(capsys, checkpoint, "--gallery", gallery, "--item", ",".join(images), "--text",
                                  text, "--topk", "3")
    assert from_file[0][0] == pid and from_file[0][1] == pytest.approx(1.0, abs=1e-3)


def test_a_text_query_ranks_the_relevant_items_as_the_evaluation_does(run, mini_root, capsys):
    """The query tower is the item text tower: a test query's text, searched in the text features, gives
    that query's ranking of ranking.npz."""
    checkpoint, out = run
    paths, direction = DatasetPaths(mini_root), "video2goods"
    d = out / "eval" / direction / "text"
    ranking = np.load(d / "ranking.npz")
    gt = parse_gt(paths.gt_file(direction))
    num_gallery = len(parse_item_list(paths.gallery_list(direction)))
    _, text, qid = _item(paths, paths.query_list(direction), index=1)
    row = list(ranking["query_ids"]).index(qid)
    expected = list(ranking["gallery_ids"][row])
    hits = _retrieve(capsys, checkpoint, "--gallery", str(d / "gallery"), "--query", text, "--topk",
                     str(num_gallery))
    got = [pid for pid, _ in hits]
    relevant = [g for g in gt[qid] if g in expected]
    assert relevant
    assert [got.index(g) + 1 for g in relevant] == [expected.index(g) + 1 for g in relevant]
    np.testing.assert_allclose([score for _, score in hits], ranking["scores"][row][:len(hits)], atol=1e-4)


def test_the_api_encodes_a_query_item_as_the_extraction_did(run, mini_root):
    from evaluate.extract import merged_paths
    from evaluate.features import load_features
    from evaluate.retrieve import Retriever, retrieval_config

    checkpoint, out = run
    paths = DatasetPaths(mini_root)
    images, text, qid = _item(paths, paths.query_list("video2goods"), index=2)
    features = Retriever(retrieval_config(checkpoint)).encode_item(images, text)
    for name, vector in features.items():
        feats, ids = load_features(*merged_paths(str(out / "eval" / "video2goods" / name / "query")))
        np.testing.assert_allclose(vector, feats[ids.index(qid)], atol=1e-5)


def test_a_gallery_of_another_checkpoint_is_refused(run, mini_root, tmp_path, capsys):
    from engine.checks import run_cli
    from evaluate.retrieve import Retriever, retrieval_config

    checkpoint, out = run
    cfg = retrieval_config(checkpoint)
    other = _save_checkpoint(cfg, tmp_path / "other.pth.tar", scale=0.5)
    retriever = Retriever(retrieval_config(other))
    gallery = str(out / "eval" / "video2goods" / "fused" / "gallery")
    with pytest.raises(ForeignFeatures, match=r"fused[/\\]gallery: its features were made by another model than "
                                              r".*other\.pth\.tar \(checkpoint_sha256 differ"):
        retriever.search(gallery, retriever.encode_query("red dress"))
    # an override after the options reaches the config: a model setting other than the gallery's
    with pytest.raises(ForeignFeatures, match=r"\(model differ"):
        evaluation.main(["retrieve", checkpoint, "--gallery", gallery, "--query", "red dress",
                         "model.backbone.text_attention_mask=false"])
    capsys.readouterr()
    assert run_cli(evaluation.main, ["retrieve", other, "--gallery", gallery, "--query", "red dress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "made by another model" in err and "\n" not in err


def test_a_checkpoint_without_its_config_is_read_with_the_config_given(run, mini_root, tmp_path, capsys):
    from engine.checks import run_cli
    from evaluate.retrieve import Retriever, retrieval_config
    from utils.checkpoint import load_checkpoint

    checkpoint, out = run
    bare = str(tmp_path / "weights_only.pth")
    torch.save({"model": load_checkpoint(checkpoint)["model"]}, bare)
    gallery = str(out / "eval" / "goods2video" / "fused" / "gallery")
    query = ["--gallery", gallery, "--query", "red dress", "--topk", "4"]
    capsys.readouterr()
    assert run_cli(evaluation.main, ["retrieve", bare, *query]) == 2
    assert capsys.readouterr().err.startswith(f"config error: {bare}: no config stored in the checkpoint")
    given = Retriever(retrieval_config(bare, DEMO, _overrides(mini_root, out)))
    stored = Retriever(retrieval_config(checkpoint))
    np.testing.assert_array_equal(given.encode_query("red dress"), stored.encode_query("red dress"))
    # the gallery's meta.json records the digest of the checkpoint file that made it, not of its weights
    with pytest.raises(ForeignFeatures, match=r"\(checkpoint_sha256 differ"):
        given.check_gallery(gallery)


def test_retrieve_arguments_are_checked_before_any_model_is_built(run, capsys):
    checkpoint, out = run
    gallery = str(out / "eval" / "video2goods" / "fused" / "gallery")
    for argv, message in ((["--item", "a.jpg"], "retrieve --item needs --text"),
                          (["--item", "a.jpg", "--text", "t", "--text-file", "t.txt"], "not both"),
                          (["--query", "q", "--text", "t"], "retrieve --query takes no --text, --text-file or --feature"),
                          (["--query", "q", "--bogus"], "unrecognized arguments: --bogus")):
        with pytest.raises(SystemExit) as stop:
            evaluation.main(["retrieve", checkpoint, "--gallery", gallery, *argv])
        assert stop.value.code == 2 and message in capsys.readouterr().err
