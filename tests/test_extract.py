"""Distributed extraction: 2 gloo ranks over an odd-length list give the single-process features and ids."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from evaluate import pipeline
from evaluate.extract import FEATURES, extract_features, merged_paths, shard_paths
from evaluate.features import load_features, write_shard
from evaluate.metrics import SEARCH_KS
from utils.distributed import exit_process
from tests.helpers import REPO_ROOT

DEMO = os.path.join(REPO_ROOT, "configs", "demo.yaml")

NUM_ITEMS = 7  # not a multiple of the 2 ranks: one rank gets a padding item


class TinyEncoder(nn.Module):
    """Deterministic stand-in exposing the model's encode_item contract."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.visual = nn.Parameter(torch.randn(3 * 4 * 4, 8, generator=g))
        self.text = nn.Parameter(torch.randn(50, 8, generator=g))
        self.calls = 0

    def encode_item(self, frames, input_ids, attention_mask):
        self.calls += 1
        v = frames.mean(1).flatten(1) @ self.visual
        t = (self.text[input_ids] * attention_mask[..., None]).sum(1)
        return {"visual": F.normalize(v, dim=-1), "text": F.normalize(t, dim=-1), "fused": F.normalize(v + t, dim=-1)}


class TinyItems(Dataset):
    def __len__(self):
        return NUM_ITEMS

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(100 + i)
        return {"frames": torch.rand(2, 3, 4, 4, generator=g), "text_ids": torch.randint(1, 50, (5,), generator=g),
                "text_mask": torch.tensor([1, 1, 1, 1 if i % 2 else 0, 0]), "pid": 1000 + 7 * (NUM_ITEMS - i),
                "index": i}


def _dirs(root):
    return {f: str(root / f) for f in FEATURES}


def _worker(rank, world_size, port, root):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    extract_features(TinyEncoder(), TinyItems(), _dirs(root), rank=rank, world_size=world_size, batch_size=2,
                     dtype="float32", meta={"checkpoint": "a"})
    dist.barrier()  # neither rank exits while the other still uses gloo
    exit_process(0)  # skips the teardown that may abort with a live gloo group



def test_two_ranks_match_one_process(tmp_path, free_port):
    single, multi = tmp_path / "single", tmp_path / "multi"
    extract_features(TinyEncoder(), TinyItems(), _dirs(single), batch_size=3, dtype="float32", meta={"checkpoint": "a"})
    mp.spawn(_worker, args=(2, free_port, multi), nprocs=2, join=True)
    model, items = TinyEncoder(), TinyItems()
    with torch.no_grad():
        direct = [model.encode_item(*(items[i][k][None] for k in ("frames", "text_ids", "text_mask")))
                  for i in range(NUM_ITEMS)]
    for f in FEATURES:
        a, ids_a = load_features(*merged_paths(str(single / f)))
        b, ids_b = load_features(*merged_paths(str(multi / f)))
        assert ids_a == ids_b == [items[i]["pid"] for i in range(NUM_ITEMS)]
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(a, torch.cat([d[f] for d in direct]).numpy(), rtol=1e-5, atol=1e-6)
        assert not (multi / f / "shard_0_of_2.npy").exists()  # shards are removed once merged


def test_resume_skips_written_shards_and_merged_files(tmp_path):
    dirs = {"fused": str(tmp_path / "fused")}
    model = TinyEncoder()
    extract_features(model, TinyItems(), dirs, dtype="float32", meta={"checkpoint": "a"})
    assert model.calls == 1
    extract_features(model, TinyItems(), dirs, dtype="float32", meta={"checkpoint": "a"})
    assert model.calls == 1  # merged features on disk: nothing to do

    # a run that stopped after writing its shard: the rerun merges the shard without encoding
    for path in merged_paths(dirs["fused"]):
        (tmp_path / "fused" / path.split("/")[-1]).unlink()
    marker = np.arange(NUM_ITEMS * 8, dtype=np.float32).reshape(NUM_ITEMS, 8)
    write_shard(*shard_paths(dirs["fused"], 0, 1), marker, list(range(NUM_ITEMS)), list(range(NUM_ITEMS)), "float32")
    extract_features(model, TinyItems(), dirs, dtype="float32", meta={"checkpoint": "a"})
    assert model.calls == 1
    feats, ids = load_features(*merged_paths(dirs["fused"]))
    np.testing.assert_array_equal(feats, marker)



def test_features_made_from_other_inputs_are_computed_again(tmp_path, capsys):
    dirs = {"fused": str(tmp_path / "fused")}
    model = TinyEncoder()
    extract_features(model, TinyItems(), dirs, dtype="float32", meta={"checkpoint": "a"})
    # a stale shard of another world size must not survive either
    write_shard(*shard_paths(dirs["fused"], 0, 2), np.zeros((1, 8)), [0], [1], "float32")
    with torch.no_grad():
        model.visual.mul_(-1)
    extract_features(model, TinyItems(), dirs, dtype="float32", meta={"checkpoint": "b"})
    assert model.calls == 2
    assert "holds fused features made from other inputs (checkpoint differ): computing them again" in \
        capsys.readouterr().out
    assert sorted(os.listdir(dirs["fused"])) == ["feats.npy", "ids.txt", "meta.json"]
    fresh = str(tmp_path / "fresh")
    extract_features(TinyEncoder(), TinyItems(), {"fused": fresh}, dtype="float32", meta={"checkpoint": "c"})
    assert not np.allclose(load_features(*merged_paths(dirs["fused"]))[0], load_features(*merged_paths(fresh))[0])


class NaNAtItem(TinyEncoder):
    def encode_item(self, frames, input_ids, attention_mask):
        out = super().encode_item(frames, input_ids, attention_mask)
        out["visual"][(frames[:, 0, 0, 0, 0] == NaNAtItem.marker).nonzero()] = float("nan")
        return out


def test_a_non_finite_feature_stops_extraction_naming_the_list_line(tmp_path):
    from evaluate.features import NonFiniteFeatures

    items = TinyItems()
    items.list_path = "lists/query.txt"
    NaNAtItem.marker = float(items[4]["frames"][0, 0, 0, 0])
    with pytest.raises(NonFiniteFeatures, match=r"lists/query.txt: non-finite visual feature for the item on line 5 "
                                                rf"\(pid {items[4]['pid']}; 1 of the batch's 2 items\)"):
        extract_features(NaNAtItem(), items, _dirs(tmp_path), batch_size=2, dtype="float32")
    for f in FEATURES:
        assert sorted(os.listdir(tmp_path / f)) == ["meta.json"]  # no shard, no merged file


def test_non_finite_rows_on_disk_are_refused_naming_file_and_row(tmp_path):
    from evaluate.features import NonFiniteFeatures, save_features

    feats = np.ones((4, 3), dtype=np.float32)
    feats[2, 1] = np.inf
    save_features(str(tmp_path / "f.npy"), str(tmp_path / "ids.txt"), feats, [10, 11, 12, 13])
    with pytest.raises(NonFiniteFeatures, match=r"f.npy: row 3 \(item id 12\) holds NaN or inf values \(1 of 4"):
        load_features(str(tmp_path / "f.npy"), str(tmp_path / "ids.txt"))


def test_a_missing_neighbour_is_never_turned_into_a_gallery_id(tmp_path, monkeypatch):
    from evaluate.features import save_features

    save_features(str(tmp_path / "q.npy"), str(tmp_path / "q.txt"), np.eye(2, 3, dtype=np.float32), [1, 2])
    save_features(str(tmp_path / "g.npy"), str(tmp_path / "g.txt"), np.eye(3, dtype=np.float32), [7, 8, 9])
    (tmp_path / "gt.txt").write_text("1\t7\n2\t8\n")
    # what an approximate index returns when it finds fewer than k neighbours
    monkeypatch.setattr(pipeline, "search_gallery", lambda q, g, k, **options: (
        np.array([[1.0, 0, -np.inf]] * 2, dtype=np.float32), np.array([[0, 2, -1], [1, 2, -1]])))
    pipeline.search_and_score(str(tmp_path / "q.npy"), str(tmp_path / "q.txt"), str(tmp_path / "g.npy"),
                              str(tmp_path / "g.txt"), str(tmp_path / "gt.txt"), str(tmp_path / "r.json"), (3,))
    ranking = np.load(tmp_path / "ranking.npz")
    np.testing.assert_array_equal(ranking["gallery_ids"], [[7, 9, -1], [8, 9, -1]])


def test_evaluate_direction_on_the_mini_dataset(mini_root, tmp_path):
    """extract -> search -> page of evaluate.pipeline with the tiny demo model, all three features in one pass."""
    import json

    from datasets.annotations import DatasetPaths, parse_item_list
    from utils.config import load_config

    torch.set_num_threads(1)
    cfg = load_config(DEMO, [f"data.root={mini_root}", f"output_dir={tmp_path}", "eval.feature=all",
                                            "eval.page_queries=2", "eval.dtype=float32"])
    results = pipeline.evaluate_direction(cfg)
    paths = DatasetPaths(mini_root)
    queries = [i.pid for i in parse_item_list(paths.query_list("video2goods"))]
    gallery = [i.pid for i in parse_item_list(paths.gallery_list("video2goods"))]
    assert set(results) == set(FEATURES)
    for f in FEATURES:
        d = tmp_path / "eval" / "video2goods" / f
        on_disk = json.loads((d / "results.json").read_text())
        assert on_disk["recall"] == pytest.approx(results[f]["recall"])
        assert on_disk["direction"] == "video2goods" and on_disk["feature"] == f
        assert on_disk["num_queries"] == len(queries) and on_disk["num_gallery"] == len(gallery)
        assert list(on_disk["recall"]) == [str(k) for k in SEARCH_KS]
        feats, ids = load_features(str(d / "gallery" / "feats.npy"), str(d / "gallery" / "ids.txt"))
        assert ids == gallery and feats.shape[0] == len(gallery)
        np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-4)
    assert (tmp_path / "eval" / "video2goods" / "fused" / "page.html").exists()


def test_feature_folder_identity_follows_every_input_of_the_features(tmp_path):
    from evaluate.pipeline import features_made_by
    from utils.config import load_config

    ckpt, lst = tmp_path / "checkpoint_latest.pth.tar", tmp_path / "query.txt"
    ckpt.write_bytes(b"first")
    lst.write_text("1\tgoods\ta.jpg\ta.txt\n")
    cfg = load_config(DEMO, [f"eval.checkpoint={ckpt}"])
    before = features_made_by(cfg, str(lst))
    assert features_made_by(cfg, str(lst)) == before
    stamp = os.stat(ckpt)
    ckpt.write_bytes(b"second")  # same path, size and time, new weights
    os.utime(ckpt, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert features_made_by(cfg, str(lst))["checkpoint_sha256"] != before["checkpoint_sha256"]
    ckpt.write_bytes(b"first")
    lst.write_text("2\tgoods\tb.jpg\tb.txt\n")  # the list edited in place
    assert features_made_by(cfg, str(lst))["list_sha256"] != before["list_sha256"]
    lst.write_text("1\tgoods\ta.jpg\ta.txt\n")
    assert features_made_by(cfg, str(lst)) == before
    for override in ("data.skip_unreadable_eval=true", "model.video.pooling=mean", "seed=1", "data.image_size=64"):
        changed = load_config(DEMO, [f"eval.checkpoint={ckpt}", override])
        assert features_made_by(changed, str(lst)) != before, override


@pytest.mark.parametrize("override,message", [
    ("train.amp=bf17", "config error: train.amp='bf17': expected one of"),
    (None, "error: list file not found: "),
])
def test_evaluation_cli_reports_bad_input_in_one_line(tmp_path, override, message):
    cmd = [sys.executable, os.path.join(REPO_ROOT, "evaluation.py"), "run", "--config", DEMO,
           f"data.root={tmp_path}"] + ([override] if override else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(message) and "\n" not in proc.stderr.strip()
