"""Pre-training (§4.2) on the training engine: the model's stages, frozen towers, exact resume,
global VTC across processes, and the hand-over of its weights to Ours-Q."""
import json
import os
import subprocess

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from datasets import build_pretrain_loader
from engine import train
from engine.checks import validate_config
from losses import VTCLoss, progressive_weight
from models import build_model, build_pretrain_model
from tests.helpers import REPO_ROOT as REPO
from utils import checkpoint as ckpt
from utils.config import ConfigError, load_config
from utils.distributed import exit_process
from utils.logging import read_metrics

CONFIG = os.path.join(REPO, "configs", "demo_pretrain.yaml")
N = 5  # steps; an epoch of the test set has more than N and fewer than 2N batches of 16 items


def overrides(mini_root, out, *extra):
    return [f"data.root={mini_root}", f"output_dir={out}", "resume=auto", "train.batch_size=16", "train.epochs=3",
            "train.warmup_ratio=0.1", "train.save_every_steps=2", "train.log_every=1", "train.keep_last=10",
            "train.threads=1", "data.num_workers=0", *extra]


def config(mini_root, out, *extra):
    cfg = load_config(CONFIG, overrides(mini_root, out, *extra))
    validate_config(cfg)
    return cfg


def first_batch(cfg):
    loader, sampler = build_pretrain_loader(cfg, 0, 1)
    sampler.set_epoch(0)
    return next(iter(loader))


def latest(out):
    return ckpt.load_checkpoint(os.path.join(out, ckpt.LATEST))


@pytest.fixture(scope="module")
def stage1(mini_root, tmp_path_factory):
    """A stage-1 run of 2N steps, written as the starting point of stage 2."""
    out = str(tmp_path_factory.mktemp("stage1"))
    assert train(config(mini_root, out, f"train.max_steps={2 * N}"))["global_step"] == 2 * N
    return out


@pytest.fixture(scope="module")
def joint(mini_root, tmp_path_factory):
    """An uninterrupted joint (Eq. 3) run of 2N steps, crossing an epoch boundary."""
    out = str(tmp_path_factory.mktemp("joint"))
    assert train(config(mini_root, out, "pretrain.stage=joint", f"train.max_steps={2 * N}"))["global_step"] == 2 * N
    return out


def test_epoch_of_the_test_set_spans_n_to_2n_steps(mini_root):
    loader, _ = build_pretrain_loader(config(mini_root, "unused"), 0, 1)
    assert N < len(loader) < 2 * N


@pytest.mark.parametrize("stage,terms", [("1", {"vtc", "otm", "mlm"}), ("2", {"epl"}),
                                         ("joint", {"vtc", "otm", "mlm", "epl"})])
def test_each_stage_trains_its_terms_and_every_trainable_parameter_gets_a_gradient(mini_root, stage, terms):
    cfg = config(mini_root, "unused", f"pretrain.stage={stage}", "init_from=null", "resume=auto")
    torch.manual_seed(0)
    model = build_pretrain_model(cfg)
    out = model(first_batch(cfg))
    assert {k[len("loss_"):] for k in out if k.startswith("loss_")} == terms
    torch.testing.assert_close(out["loss"], sum(out[f"loss_{t}"] for t in terms))
    out["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert no_grad == []
    assert hasattr(model, "vtm_head") == ("otm" in terms) and hasattr(model, "entity_head") == ("epl" in terms)
    if "mlm" in terms:  # the MLM decoder is the word embedding matrix itself
        assert model.mlm_head.decoder.weight is model.backbone.clip.bert.embeddings.word_embeddings.weight


def test_stage2_freezes_the_towers(mini_root):
    cfg = config(mini_root, "unused", "pretrain.stage=2", "resume=auto")
    model = build_pretrain_model(cfg).train()
    assert not model.backbone.training and model.fusion.training  # no dropout in the frozen towers
    model(first_batch(cfg))["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert [g["name"] for g in model.param_groups()] == ["text", "new"]
    grouped = {id(p) for g in model.param_groups() for p in g["params"]}
    # u_cls's projection is retrieval's; pre-training does not use it
    assert grouped == {id(p) for n, p in model.named_parameters()
                       if n.startswith(("fusion.", "entity_head.")) and not n.startswith("fusion.proj.")}


def test_stage2_run_leaves_the_towers_bit_identical(stage1, mini_root, tmp_path):
    start = os.path.join(stage1, ckpt.LATEST)
    out = str(tmp_path)
    train(config(mini_root, out, "pretrain.stage=2", f"init_from={start}", f"train.max_steps={N}"))
    before, after = ckpt.load_checkpoint(start)["model"], latest(out)["model"]
    towers = [k for k in after if k.startswith("backbone.")]
    assert towers and all(torch.equal(before[k], after[k]) for k in towers)
    assert not all(torch.equal(before[k], after[k]) for k in after if k.startswith("fusion.layers."))
    metrics = read_metrics(os.path.join(out, "metrics.jsonl"))
    for rec in metrics.values():  # w_t of the whole epoch the step belongs to
        assert rec["train/epl_w_t"] == pytest.approx(progressive_weight(int(rec["epoch"] - 1e-9), 1.0))


def test_stage2_needs_a_starting_checkpoint(mini_root):
    with pytest.raises(ConfigError, match="init_from"):
        validate_config(load_config(CONFIG, overrides(mini_root, "x", "pretrain.stage=2", "resume=null")))
    with pytest.raises(ConfigError, match="model.fusion.type"):
        validate_config(load_config(CONFIG, overrides(mini_root, "x", "model.fusion.type=add")))


def test_missing_entity_list_names_the_file(mini_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(mini_root, root)
    os.remove(root / "entities" / "level2.txt")
    with pytest.raises(FileNotFoundError, match=r"entities/level2\.txt"):
        build_pretrain_model(config(str(root), "unused", "pretrain.stage=joint"))


def test_stop_and_resume_in_the_middle_of_an_epoch_is_exact(joint, mini_root, tmp_path):
    out = str(tmp_path)
    assert train(config(mini_root, out, "pretrain.stage=joint", f"train.max_steps={N}"))["global_step"] == N
    assert (latest(out)["epoch"], latest(out)["step_in_epoch"]) == (0, N)
    train(config(mini_root, out, "pretrain.stage=joint", f"train.max_steps={2 * N}"))
    a, b = latest(joint), latest(out)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ma, mb = read_metrics(os.path.join(joint, "metrics.jsonl")), read_metrics(os.path.join(out, "metrics.jsonl"))
    for step in range(1, 2 * N + 1):
        for key in ("train/loss_vtc", "train/loss_otm", "train/loss_mlm", "train/loss_epl", "lr/text", "lr/new"):
            assert mb[step][key] == ma[step][key], (step, key)


def test_killed_while_writing_a_checkpoint_then_resumed_is_exact(joint, mini_root, tmp_path, killed_at_checkpoint):
    out = str(tmp_path)
    cmd = killed_at_checkpoint(4, os.path.join(REPO, "main_cross_domain_emb.py"), "--config", CONFIG,
                               *overrides(mini_root, out, "pretrain.stage=joint", f"train.max_steps={2 * N}"))
    killed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert ckpt.find_latest_valid(out)[1]["global_step"] == 2
    train(config(mini_root, out, "pretrain.stage=joint", f"train.max_steps={2 * N}"))
    a, b = latest(joint)["model"], latest(out)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_pretraining_checkpoint_resumes_in_one_process(mini_root, tmp_path, free_port):
    out = str(tmp_path)
    cmd = ["sh", os.path.join(REPO, "train.sh"), CONFIG, *overrides(mini_root, out, "train.max_steps=2")]
    env = dict(os.environ, NPROC_PER_NODE="2", MASTER_PORT=str(free_port), OMP_NUM_THREADS="1")
    two = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    saved = latest(out)
    assert (saved["world_size"], saved["global_step"], len(saved["rng"])) == (2, 2, 2)
    # the same share of the epoch in 1 process
    one_len = len(build_pretrain_loader(config(mini_root, out), 0, 1)[0])
    start = round(2 * one_len / saved["epoch_lengths"][0])
    result = train(config(mini_root, out, f"train.max_steps={start + 2}"))
    resumed = latest(out)
    assert (result["global_step"], resumed["world_size"], resumed["epoch"], resumed["step_in_epoch"]) == (
        start + 2, 1, 0, start + 2)
    assert sorted(read_metrics(os.path.join(out, "metrics.jsonl"))) == [1, 2, start + 1, start + 2]
    assert {int(v["step"]) for v in resumed["optimizer"]["state"].values()} == {4}


def test_retrieval_model_starts_from_the_pretrained_towers_and_fusion(stage1, mini_root, tmp_path):
    demo = os.path.join(REPO, "configs", "demo.yaml")
    cfg = load_config(demo, [f"data.root={mini_root}", f"output_dir={tmp_path}",
                             f"init_from={os.path.join(stage1, ckpt.LATEST)}"])
    model = build_model(cfg)
    report = ckpt.load_init_weights(model, cfg["init_from"])
    pretrained = latest(stage1)["model"]
    own = model.state_dict()
    shared = [k for k in own if k.startswith(("backbone.", "fusion."))]
    assert set(shared) <= set(report["loaded"])
    assert all(torch.equal(own[k], pretrained[k]) for k in shared)
    assert all(k.startswith(("video_pooling.", "text_recon.", "vision_recon.", "contrastive."))
               for k in report["missing"])


def _vtc_case(rank=0, world=1, batch=8):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    enc_v, enc_t = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    xv, xt = torch.randn(batch, 6, generator=g), torch.randn(batch, 6, generator=g)
    loss_fn = VTCLoss(negatives="global")
    rows = slice(rank * batch // world, (rank + 1) * batch // world)
    loss, sim = loss_fn(enc_v(xv[rows]), enc_t(xt[rows]))
    loss.backward()
    params = [*enc_v.parameters(), *enc_t.parameters(), loss_fn.logit_scale]
    return loss.detach(), [p.grad for p in params], sim


def _vtc_worker(rank, world, port, out_path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    loss, grads, sim = _vtc_case(rank, world)
    dist.all_reduce(loss)  # as DDP: the mean loss, the mean gradients
    for g in grads:
        dist.all_reduce(g)
    if rank == 0:
        torch.save({"loss": loss / world, "grads": [g / world for g in grads], "sim": sim}, out_path)
    dist.barrier()  # neither rank exits while the other still uses gloo
    exit_process(0)  # skips the teardown that may abort with a live gloo group


def test_global_vtc_on_two_processes_equals_one_process_with_the_double_batch(tmp_path, free_port):
    out = tmp_path / "rank0.pt"
    mp.spawn(_vtc_worker, args=(2, free_port, str(out)), nprocs=2, join=True)
    two = torch.load(out)
    loss, grads, sim = _vtc_case()
    torch.testing.assert_close(two["loss"], loss)
    for g2, g1 in zip(two["grads"], grads):
        torch.testing.assert_close(g2, g1)
    # VTM draws its hard negatives from the local block: the rank's own 4 x 4 of the 8 x 8 similarities
    torch.testing.assert_close(two["sim"], sim[:4, :4])


def test_metrics_and_start_up_report_of_a_pretraining_run(joint):
    metrics = read_metrics(os.path.join(joint, "metrics.jsonl"))
    assert sorted(metrics) == list(range(1, 2 * N + 1))
    for key in ("train/loss", "train/loss_vtc", "train/loss_otm", "train/loss_mlm", "train/loss_epl", "train/tau",
                "train/epl_w_t", "lr/visual", "lr/text", "lr/new", "perf/samples_per_s"):
        assert key in metrics[1], key
    with open(os.path.join(joint, "train.log"), encoding="utf-8") as f:
        log = f.read()
    assert "task pretrain" in log and "total steps" in log
    assert all(f"param group {group} " in log for group in ("visual", "text", "new"))  # each with its base lr
    assert os.listdir(os.path.join(joint, "tb"))
    assert json.loads(json.dumps(latest(joint)["config"]))["task"] == "pretrain"
