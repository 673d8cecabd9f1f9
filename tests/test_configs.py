"""Every shipped config resolves against the schema and builds the model variant its comment names."""
import glob
import os

import pytest
import torch

from models import build_model
from models.fusion import AddFusion, Combiner, FusionEncoder
from models.ftt import FrameTemporalTransformer
from models.video_pooling import LSTMPooling, MeanPooling, SumPooling
from tests.helpers import REPO_ROOT, TINY
from utils.config import load_config

CONFIGS = os.path.join(REPO_ROOT, "configs")
# Ablation rows of the paper: (video pooling, fusion, reconstruction heads).
EXPECTED = {
    "qcd_real400k.yaml": (FrameTemporalTransformer, FusionEncoder, True),
    "ablations/table3_base_no_recon.yaml": (SumPooling, AddFusion, False),
    "ablations/table3_base.yaml": (SumPooling, AddFusion, True),
    "ablations/table3_base_ftt.yaml": (FrameTemporalTransformer, AddFusion, True),
    "ablations/table5_combiner.yaml": (FrameTemporalTransformer, Combiner, True),
    "ablations/table6_mean.yaml": (MeanPooling, AddFusion, True),
    "ablations/table6_lstm.yaml": (LSTMPooling, AddFusion, True),
}


# Pre-training configs: (stage, the config whose checkpoint it starts from)
PRETRAIN = {
    "pretrain_real400k.yaml": ("1", None),
    "pretrain_real400k_stage2.yaml": ("2", "pretrain_real400k.yaml"),
}
# Table 4 rows fine-tuned from pre-training: the pre-training config whose checkpoint they start from
FROM_PRETRAINING = {
    "qcd_real400k_pretrained.yaml": "pretrain_real400k_stage2.yaml",
    "ablations/table4_q_p_epl.yaml": "pretrain_real400k_stage2.yaml",
    "ablations/table4_q_p_no_epl.yaml": "pretrain_real400k.yaml",
}
EXPECTED.update({name: EXPECTED["qcd_real400k.yaml"] for name in FROM_PRETRAINING})


def test_every_config_file_is_listed_or_the_demo():
    found = {os.path.relpath(p, CONFIGS) for p in glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True)}
    baselines = {p for p in found if p.startswith("baselines" + os.sep)}  # tests/test_baselines.py
    assert len(baselines) == 15 + 2 + 3  # the paper's rows, COPE-ft and COPE-Q, the three setting bases
    assert found - baselines == set(EXPECTED) | set(PRETRAIN) | {"base.yaml", "demo.yaml", "demo_pretrain.yaml"}


def _latest(name):
    return os.path.join(load_config(os.path.join(CONFIGS, name))["output_dir"], "checkpoint_latest.pth.tar")


@pytest.mark.parametrize("name", sorted(PRETRAIN))
def test_pretraining_configs_chain_their_stages(name):
    cfg = load_config(os.path.join(CONFIGS, name))
    stage, parent = PRETRAIN[name]
    assert (cfg["task"], cfg["pretrain"]["stage"]) == ("pretrain", stage)
    assert cfg["init_from"] == (_latest(parent) if parent else None)
    t = cfg["train"]
    assert (t["batch_size"], t["epochs"], t["optimizer"]) == (80, 10, "adam")  # §5.1; its rates: test_pretrain_rates.py


@pytest.mark.parametrize("name", sorted(FROM_PRETRAINING))
def test_table4_rows_start_from_their_pretraining_checkpoint(name):
    cfg = load_config(os.path.join(CONFIGS, name))
    assert cfg["task"] == "retrieval" and cfg["init_from"] == _latest(FROM_PRETRAINING[name])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_builds_its_variant(name):
    # The paper's sizes are shrunk and the Chinese-CLIP checkpoint is left out; the switches are the file's own.
    cfg = load_config(os.path.join(CONFIGS, name), TINY + ["model.backbone.pretrained=null"])
    torch.manual_seed(0)
    model = build_model(cfg)
    pooling, fusion, recon = EXPECTED[name]
    assert type(model.video_pooling) is pooling
    assert type(model.fusion) is fusion
    assert hasattr(model, "text_recon") is recon and hasattr(model, "vision_recon") is recon


def test_ablation_runs_write_to_their_own_folders():
    dirs = [load_config(os.path.join(CONFIGS, name))["output_dir"] for name in [*EXPECTED, *PRETRAIN]]
    assert len(set(dirs)) == len(dirs)
