"""Feature-cached gradient accumulation (train.accum_steps, engine.trainer.FeatureCachedStep) and the cosine
schedule (train.schedule).

The step in 4 micro-batches gives the loss and the parameter gradients of one pass over the whole batch, for
each model of BUILDERS, on 1 process and on 2 gloo processes with global negatives (where it also
all-reduces once per step, as one pass does). Random draws are fixed in those comparisons (eval mode,
deterministic masks and hardest VTM negatives: a micro-batch draws from its own slice of the random stream);
in train mode, the recomputation replays the first pass's dropout. A run with accum_steps=2 stopped in the
middle of an epoch and resumed ends as the run straight through, with the cosine schedule's lrs.
"""
import copy
import datetime
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from cn_clip.clip.model import LayerNorm as CNClipLayerNorm
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

import engine
from datasets import build_pretrain_loader, build_train_loader
from engine.checks import validate_config
from engine.trainer import Embedder, FeatureCachedStep, check_accumulation, split_batch
from losses import mlm_loss, mlm_sums, text_reconstruction_loss, text_reconstruction_sums, token_mean
from models import build_model, build_pretrain_model, pretrain as pretrain_module
from models.reconstruction import VisionReconstructor
from tests.helpers import COPE_TINY, REPO_ROOT
from utils import checkpoint as ckpt
from utils.config import ConfigError, load_config
from utils.distributed import exit_process
from utils.logging import read_metrics
from utils.schedule import SCHEDULES, cosine_lr_factor, lr_factor

DEMO = os.path.join(REPO_ROOT, "configs", "demo.yaml")
DEMO_PRETRAIN = os.path.join(REPO_ROOT, "configs", "demo_pretrain.yaml")
BATCH = 8  # per process in the equality checks; 4 micro-batches of 2
ACCUM = 4
RTOL = 1e-5


def _config(path, mini_root, *extra):
    return load_config(path, [f"data.root={mini_root}", "data.num_workers=0", f"train.batch_size={BATCH}",
                              "output_dir=unused", *extra])


def _first_batch(cfg, build_loader):
    loader, sampler = build_loader(cfg, 0, 1)
    sampler.set_epoch(0)
    return next(iter(loader))


def qcd_query(mini_root, *extra):
    cfg = _config(DEMO, mini_root, "loss.recon=true", *extra)
    return build_model(cfg), _first_batch(cfg, build_train_loader)


def qcd_ft(mini_root, *extra):
    # the Siamese setting of configs/baselines/_ft.yaml
    cfg = _config(DEMO, mini_root, "train.mode=ft", "loss.recon=false", "loss.symmetric=true",
                  "model.video.pooling=mean", "model.fusion.type=add", *extra)
    return build_model(cfg), _first_batch(cfg, build_train_loader)


def pretrain_joint(mini_root, *extra):
    cfg = _config(DEMO_PRETRAIN, mini_root, "pretrain.stage=joint", *extra)
    return build_pretrain_model(cfg), _first_batch(cfg, build_pretrain_loader)


def pretrain_stage2(mini_root, *extra):
    cfg = _config(DEMO_PRETRAIN, mini_root, "pretrain.stage=2", *extra)
    return build_pretrain_model(cfg), _first_batch(cfg, build_pretrain_loader)


def _cope(row, mini_root, *extra):
    # every class a centre and every centre a candidate: the classification term is deterministic
    cfg = _config(os.path.join(REPO_ROOT, "configs", "baselines", f"{row}.yaml"), mini_root,
                  "model.backbone.pretrained=null", *COPE_TINY, "loss.cope.cls_negatives=100", *extra)
    model = build_model(cfg)
    classes = model.classes.num_classes
    model.classes.update(torch.randn(classes, model.classes.centres.shape[1]), torch.arange(classes))
    return model, _first_batch(cfg, build_train_loader)


def cope_ft(mini_root, *extra):
    return _cope("cope_ft", mini_root, *extra)


def cope_q(mini_root, *extra):
    return _cope("cope_q", mini_root, *extra)


# name -> builder(mini_root, *config overrides) -> (model, a batch of BATCH items); a model family that
# implements the accumulation protocol joins the equality checks with an entry here
BUILDERS = {"qcd_query": qcd_query, "qcd_ft": qcd_ft, "pretrain_joint": pretrain_joint,
            "pretrain_stage2": pretrain_stage2, "cope_ft": cope_ft, "cope_q": cope_q}
# those with batch-level terms, whose negatives gather across ranks
GLOBAL_BUILDERS = ("qcd_query", "qcd_ft", "pretrain_joint", "cope_ft")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fixed_patch_mask(self, batch, num_patches, device):
    return (torch.arange(num_patches, device=device) % 3 == 0).expand(batch, num_patches)


def _fixed_mlm_mask(input_ids, attention_mask, mask_id, vocab_size, special_ids, prob=0.15, generator=None):
    # every third real token of each text, replaced by [MASK]
    position = torch.arange(input_ids.shape[1], device=input_ids.device)
    chosen = attention_mask.bool() & (position % 3 == 1) & (input_ids != mask_id)
    return input_ids.masked_fill(chosen, mask_id), input_ids.masked_fill(~chosen, -100)


def _hardest_negatives(sim_v2t, sim_t2v, generator=None):
    eye = torch.eye(len(sim_v2t), dtype=torch.bool)
    return tuple(s.masked_fill(eye, float("-inf")).argmax(dim=1) for s in (sim_v2t, sim_t2v))


def fix_random_draws():
    """Replace the random masks and VTM draws with fixed ones, and let cn_clip's LayerNorm (which computes in
    float32 for fp16 models) run in float64 (to undo: restore_random_draws of the returned originals)."""
    saved = (VisionReconstructor.random_mask, pretrain_module.mask_tokens, pretrain_module.sample_hard_negatives,
             CNClipLayerNorm.forward)
    VisionReconstructor.random_mask = _fixed_patch_mask
    pretrain_module.mask_tokens = _fixed_mlm_mask
    pretrain_module.sample_hard_negatives = _hardest_negatives
    CNClipLayerNorm.forward = torch.nn.LayerNorm.forward
    return saved


def restore_random_draws(saved):
    (VisionReconstructor.random_mask, pretrain_module.mask_tokens, pretrain_module.sample_hard_negatives,
     CNClipLayerNorm.forward) = saved


@pytest.fixture
def fixed_draws():
    saved = fix_random_draws()
    yield
    restore_random_draws(saved)


def one_pass(model, batch, wrapped=None):
    """(loss terms, {name: grad}) of one forward-backward over the whole batch (through `wrapped`, e.g. DDP)."""
    model.zero_grad(set_to_none=True)
    out = (wrapped or model)(batch)
    out["loss"].backward()
    return _terms(out), _grads(model)


def accumulated(model, batch, accum_steps=ACCUM, embedder=None):
    """The same through FeatureCachedStep in `accum_steps` micro-batches."""
    model.zero_grad(set_to_none=True)
    step = FeatureCachedStep(model, embedder or Embedder(model), accum_steps, torch.amp.GradScaler("cpu", enabled=False))
    out = step.forward(batch)
    step.backward()
    return _terms(out), _grads(model)


def _terms(out):
    return {k: float(v.detach()) for k, v in out.items() if k.startswith("loss")}


def _grads(model):
    return {name: None if p.grad is None else p.grad.detach().clone() for name, p in model.named_parameters()
            if p.requires_grad}


def assert_same_step(got, want, rtol=RTOL):
    """Loss terms within rtol of each other; every parameter's gradient within rtol of its norm, or, for one
    that vanishes analytically (an attention key bias: softmax ignores a shift), within 1e-8 of the whole
    gradient's norm."""
    (terms, grads), (terms_ref, grads_ref) = got, want
    assert terms.keys() == terms_ref.keys()
    for k, v in terms_ref.items():
        assert terms[k] == pytest.approx(v, rel=rtol, abs=1e-7), k
    assert grads.keys() == grads_ref.keys()
    whole = torch.linalg.norm(torch.cat([g.flatten() for g in grads_ref.values() if g is not None]))
    assert whole > 0
    for name, g in grads_ref.items():
        assert (grads[name] is None) == (g is None), name
        if g is not None:
            assert torch.linalg.norm(grads[name] - g) <= rtol * torch.linalg.norm(g) + 1e-8 * whole, name


def in_float64(model, batch):
    """The model and the batch's floating tensors in float64, so that rounding stays far below the tolerance
    (float32 rounding alone moves a sum that cancels, such as the temperature's gradient, by more)."""
    return model.double().eval(), {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
                                   for k, v in batch.items()}


def check_accumulation_is_exact(model, batch, accum_steps=ACCUM):
    """The reusable equality check: `accum_steps` micro-batches give the step of one pass (random draws fixed
    by the caller; dropout off)."""
    model, batch = in_float64(model, batch)
    assert_same_step(accumulated(model, batch, accum_steps), one_pass(model, batch))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_accumulated_step_equals_one_pass_over_the_batch(name, mini_root, fixed_draws):
    torch.manual_seed(0)
    model, batch = BUILDERS[name](mini_root)
    check_accumulation_is_exact(model, batch)


def test_recomputation_replays_the_first_pass_dropout(mini_root):
    """In train mode each micro-batch's recomputation sees the dropout and masks of its first pass."""
    torch.manual_seed(0)
    model, batch = qcd_query(mini_root)
    model.train()
    seen = []

    class Recording(Embedder):
        def forward(self, micro):
            emb, local = self.model.embed(micro)
            seen.append({k: v.detach().clone() for k, v in {**emb, **local}.items()})
            return emb, local

    step = FeatureCachedStep(model, Recording(model), 2, torch.amp.GradScaler("cpu", enabled=False))
    first = []
    embed = model.embed

    def recording_embed(micro):
        emb, local = embed(micro)
        first.append({k: v.detach().clone() for k, v in {**emb, **local}.items()})
        return emb, local

    model.embed = recording_embed
    step.forward(batch)
    del model.embed
    step.backward()
    assert len(first) == len(seen) == 2
    for a, b in zip(first, seen):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    # dropout and the patch mask do draw: another draw of micro-batch 0 differs
    again = model.embed(split_batch(batch, 2)[0])
    assert not torch.equal(again[0]["u"], first[0]["u"])


def _two_process_worker(rank, world, port, mini_root, out_path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    saved = fix_random_draws()
    results = {}
    for name in GLOBAL_BUILDERS:
        torch.manual_seed(0)  # the same weights on both ranks
        model, batch = BUILDERS[name](mini_root, "loss.negatives=global", f"train.batch_size={2 * BATCH}")
        model, batch = in_float64(model, split_batch(batch, world)[rank])
        twin = copy.deepcopy(model)
        calls = {"one": 0, "accum": 0}

        def counting(key):
            def hook(state, bucket):
                calls[key] += 1
                return default_hooks.allreduce_hook(None, bucket)
            return hook

        one = DistributedDataParallel(model)
        one.register_comm_hook(None, counting("one"))
        acc = DistributedDataParallel(Embedder(twin))
        acc.register_comm_hook(None, counting("accum"))
        ref = one_pass(model, batch, wrapped=one)
        got = accumulated(twin, batch, embedder=acc)
        results[name] = {"ref": ref, "got": got, "calls": dict(calls)}
    restore_random_draws(saved)
    if rank == 0:
        torch.save(results, out_path)
    dist.barrier()
    exit_process(0)  # skips the teardown that may abort with a live gloo group


def test_two_processes_with_global_negatives(mini_root, tmp_path, free_port):
    """On 2 gloo ranks with loss.negatives=global: the DDP step in 4 micro-batches per rank equals one DDP pass,
    with as many all-reduces (no_sync before the last micro-batch)."""
    out = tmp_path / "rank0.pt"
    mp.spawn(_two_process_worker, args=(2, free_port, mini_root, str(out)), nprocs=2, join=True)
    results = torch.load(out)
    assert sorted(results) == sorted(GLOBAL_BUILDERS)
    for name, r in results.items():
        assert_same_step(r["got"], r["ref"])
        assert r["calls"]["accum"] == r["calls"]["one"] > 0, name


def test_split_batch_cuts_tensors_and_keeps_other_values():
    batch = {"x": torch.arange(8).view(4, 2), "y": torch.arange(4), "domain": "goods", "epoch": 3,
             "scale": torch.tensor(2.0)}
    parts = split_batch(batch, 2)
    assert [p["y"].tolist() for p in parts] == [[0, 1], [2, 3]]
    assert torch.equal(torch.cat([p["x"] for p in parts]), batch["x"])
    assert all(p["domain"] == "goods" and p["epoch"] == 3 and p["scale"] is batch["scale"] for p in parts)
    with pytest.raises(ValueError, match="3 equal micro-batches"):
        split_batch(batch, 3)


def test_per_sample_token_sums_give_the_token_means():
    """Split into any groups of samples, the sums and counts give the loss over all their tokens."""
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([[3, -100, 7, 1], [-100, -100, -100, -100], [-100, 12, -100, 5]])
    logits = torch.randn(3, 4, 16, generator=g)
    chosen = labels != -100
    sums, counts = mlm_sums(logits[chosen], labels[chosen], chosen.nonzero()[:, 0], 3)
    assert counts.tolist() == [3, 0, 2]
    torch.testing.assert_close(token_mean(sums, counts), mlm_loss(logits, labels))
    torch.testing.assert_close(token_mean(sums[2:], counts[2:]), mlm_loss(logits[2:], labels[2:]))
    ids = torch.tensor([[5, 6, 7, 0], [5, 8, 0, 0]])
    mask = (ids != 0).long()
    text_logits = torch.randn(2, 4, 16, generator=g)
    sums, counts = text_reconstruction_sums(text_logits, ids, mask)
    assert counts.tolist() == [2, 1]
    torch.testing.assert_close(sums[1], F.cross_entropy(text_logits[1, :1], ids[1, 1:2], reduction="sum"))
    torch.testing.assert_close(token_mean(sums, counts), text_reconstruction_loss(text_logits, ids, mask))


def test_config_checks_of_accum_steps(mini_root):
    def cfg(*extra):
        return load_config(DEMO, [f"data.root={mini_root}", "output_dir=x", *extra])

    validate_config(cfg("train.batch_size=16", "train.accum_steps=4"))
    with pytest.raises(ConfigError, match="train.accum_steps=3 must divide train.batch_size=16"):
        validate_config(cfg("train.batch_size=16", "train.accum_steps=3"))
    with pytest.raises(ConfigError, match="train.accum_steps=0"):
        validate_config(cfg("train.accum_steps=0"))
    with pytest.raises(ConfigError, match="text_attention_mask=false"):
        validate_config(cfg("train.accum_steps=2", "model.backbone.text_attention_mask=false"))
    with pytest.raises(ConfigError, match="train.schedule='step'"):
        validate_config(cfg("train.schedule=step"))

    plain = cfg("train.accum_steps=2", "model.family=clip")
    with pytest.raises(ConfigError, match="task=retrieval with model.family=clip has no embed, batch_terms, total"):
        check_accumulation(torch.nn.Linear(2, 2), plain)
    with pytest.raises(ConfigError, match="BatchNorm"):
        check_accumulation(_WithBatchNorm(), plain)
    check_accumulation(torch.nn.Linear(2, 2), cfg())  # accum_steps=1 needs nothing


class _WithBatchNorm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(2)

    def embed(self, batch):
        return {}, {}

    batch_terms = total = embed


@pytest.mark.parametrize("step,expected", [
    (0, 0.5), (1, 1.0),                              # warm-up over 2 steps
    (2, 1.0), (4, 0.5 * (1 + math.cos(math.pi / 4))), (6, 0.5), (9, 0.5 * (1 + math.cos(math.pi * 7 / 8))),
    (10, 0.0), (12, 0.0),                            # cosine over the 8 steps after it, 0 at total_steps
])
def test_cosine_factor_hand_computed(step, expected):
    assert cosine_lr_factor(step, warmup_steps=2, total_steps=10) == pytest.approx(expected, abs=1e-12)


def test_cosine_and_linear_schedules_share_the_warm_up_and_the_saved_state():
    linear, cosine = (SCHEDULES[k]([1e-3, 2e-4], 3, 12) for k in ("linear", "cosine"))
    assert [linear.lrs(s) for s in range(3)] == [cosine.lrs(s) for s in range(3)]
    assert cosine.lrs(7) == pytest.approx([b * cosine_lr_factor(7, 3, 12) for b in (1e-3, 2e-4)])
    assert linear.lrs(7) == pytest.approx([b * lr_factor(7, 3, 12) for b in (1e-3, 2e-4)])
    assert cosine.state_dict() == linear.state_dict()


def _run(mini_root, out, *extra):
    cfg = load_config(DEMO, [f"data.root={mini_root}", f"output_dir={out}", "resume=auto", "train.batch_size=4",
                             "train.accum_steps=2", "train.schedule=cosine", "train.epochs=2",
                             "train.warmup_ratio=0.2", "train.save_every_steps=100", "train.log_every=1",
                             "train.threads=1", "data.num_workers=0", *extra])
    validate_config(cfg)
    return engine.train(cfg)


def test_accumulated_run_resumed_mid_epoch_is_exact_and_keeps_the_cosine_schedule(mini_root, tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    steps = 12  # epochs of 9-10 batches of 4: step 5 is mid-epoch, step 12 in the second one
    assert _run(mini_root, straight, f"train.max_steps={steps}")["global_step"] == steps
    assert _run(mini_root, resumed, "train.max_steps=5")["global_step"] == 5
    assert ckpt.load_checkpoint(os.path.join(resumed, ckpt.LATEST))["step_in_epoch"] == 5
    assert _run(mini_root, resumed, f"train.max_steps={steps}")["global_step"] == steps
    a, b = (ckpt.load_checkpoint(os.path.join(d, ckpt.LATEST)) for d in (straight, resumed))
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    ma, mb = (read_metrics(os.path.join(d, "metrics.jsonl")) for d in (straight, resumed))
    total, lr = a["scheduler"]["total_steps"], a["config"]["train"]["lr"]
    warmup = math.ceil(0.2 * total)
    for step in range(1, steps + 1):
        assert mb[step]["train/loss"] == ma[step]["train/loss"], step
        assert ma[step]["lr/other"] == pytest.approx(lr * cosine_lr_factor(step - 1, warmup, total)), step
        assert mb[step]["lr/other"] == ma[step]["lr/other"], step
