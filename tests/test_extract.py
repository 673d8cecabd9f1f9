"""Distributed extraction: 2 gloo ranks over an odd-length list give the single-process features and ids."""
import os
import socket
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

from evaluate.extract import FEATURES, extract_features, merged_paths, shard_paths
from evaluate.features import load_features, write_shard

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
    try:
        extract_features(TinyEncoder(), TinyItems(), _dirs(root), rank=rank, world_size=world_size, batch_size=2,
                         dtype="float32", meta={"checkpoint": "a"})
        dist.barrier()  # neither rank tears down gloo while the other still uses it
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_one_process(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    extract_features(TinyEncoder(), TinyItems(), _dirs(single), batch_size=3, dtype="float32", meta={"checkpoint": "a"})
    mp.spawn(_worker, args=(2, _free_port(), multi), nprocs=2, join=True)
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

    with pytest.raises(RuntimeError, match="checkpoint"):
        extract_features(model, TinyItems(), dirs, dtype="float32", meta={"checkpoint": "b"})


def test_evaluate_direction_on_the_mini_dataset(mini_root, tmp_path):
    """extract -> search -> page of evaluation.py with the tiny demo model, all three features in one pass."""
    import json

    import evaluation
    from datasets.annotations import DatasetPaths, parse_item_list
    from utils.config import load_config

    torch.set_num_threads(1)
    cfg = load_config("configs/demo.yaml", [f"data.root={mini_root}", f"output_dir={tmp_path}", "eval.feature=all",
                                            "eval.page_queries=2", "eval.dtype=float32"])
    results = evaluation.evaluate_direction(cfg)
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
        assert list(on_disk["recall"]) == ["10", "20", "50", "100"]
        feats, ids = load_features(str(d / "gallery" / "feats.npy"), str(d / "gallery" / "ids.txt"))
        assert ids == gallery and feats.shape[0] == len(gallery)
        np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-4)
    assert (tmp_path / "eval" / "video2goods" / "fused" / "page.html").exists()


def test_feature_folder_identity_follows_checkpoint_contents_and_model(tmp_path):
    import os
    import time

    from evaluation import features_made_by
    from utils.config import load_config

    ckpt = tmp_path / "checkpoint_latest.pth.tar"
    ckpt.write_bytes(b"first")
    cfg = load_config("configs/demo.yaml", [f"eval.checkpoint={ckpt}"])
    before = features_made_by(cfg)
    assert features_made_by(cfg) == before
    ckpt.write_bytes(b"retrained")  # same path, new weights
    os.utime(ckpt, (time.time() + 5, time.time() + 5))
    assert features_made_by(cfg)["checkpoint_stamp"] != before["checkpoint_stamp"]
    other = load_config("configs/demo.yaml", [f"eval.checkpoint={ckpt}", "model.video.pooling=mean"])
    assert features_made_by(other)["model"] != features_made_by(cfg)["model"]
    assert features_made_by(load_config("configs/demo.yaml", ["seed=1"]))["seed"] == 1


@pytest.mark.parametrize("override,message", [
    ("train.amp=bf17", "config error: train.amp='bf17': expected one of"),
    (None, "error: list file not found: "),
])
def test_evaluation_cli_reports_bad_input_in_one_line(tmp_path, override, message):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, os.path.join(repo, "evaluation.py"), "run", "--config",
           os.path.join(repo, "configs", "demo.yaml"), f"data.root={tmp_path}"] + ([override] if override else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(message) and "\n" not in proc.stderr.strip()
