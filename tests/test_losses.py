"""Query-guided contrastive loss (Eq. 5-6), its global negatives across ranks, and the reconstruction losses."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from losses import QueryContrastiveLoss, gather_features, text_reconstruction_loss, vision_reconstruction_loss
from utils.distributed import exit_process


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def reference_infonce(q, x, tau):
    """-1/N sum_i log( exp(cos(q_i, x_i)/tau) / sum_j exp(cos(q_i, x_j)/tau) ), written out in float64."""
    q, x = q.double().tolist(), x.double().tolist()

    def cos(a, b):
        dot = sum(i * j for i, j in zip(a, b))
        return dot / math.sqrt(sum(i * i for i in a)) / math.sqrt(sum(j * j for j in b))

    total = 0.0
    for i in range(len(q)):
        sims = [math.exp(cos(q[i], x[j]) / tau) for j in range(len(x))]
        total -= math.log(sims[i] / sum(sims))
    return total / len(q)


def test_contrastive_loss_matches_reference():
    torch.manual_seed(0)
    q, x = torch.randn(6, 5) * 3, torch.randn(6, 5)
    loss = QueryContrastiveLoss(temperature=0.07)
    with torch.no_grad():
        assert float(loss(q, x)) == pytest.approx(reference_infonce(q, x, 0.07), rel=1e-5)
    sym = QueryContrastiveLoss(temperature=0.2, symmetric=True)
    expected = (reference_infonce(q, x, 0.2) + reference_infonce(x, q, 0.2)) / 2
    with torch.no_grad():
        assert float(sym(q, x)) == pytest.approx(expected, rel=1e-5)


def test_temperature_is_learnable_and_clamped():
    loss = QueryContrastiveLoss(temperature=0.07, max_logit_scale=100.0)
    q, x = torch.randn(4, 3), torch.randn(4, 3)
    loss(q, x).backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad != 0
    assert float(loss.scale().detach()) == pytest.approx(1 / 0.07)
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(1000.0))
    loss.logit_scale.grad = None
    assert float(loss.scale().detach()) == pytest.approx(100.0)
    loss(q, x).backward()
    assert loss.logit_scale.grad == 0
    fixed = QueryContrastiveLoss(learn_temperature=False)
    assert not fixed.logit_scale.requires_grad


def test_gather_features_is_identity_without_process_group():
    x = torch.randn(3, 2)
    assert gather_features(x) is x



def _setup(seed=0, batch=8):
    """A shared toy encoder pair and a global batch of `batch` pairs."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    enc_q, enc_x = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    return enc_q, enc_x, torch.randn(batch, 6, generator=g), torch.randn(batch, 6, generator=g)


def _loss_and_grads(symmetric, rank=0, world=1):
    enc_q, enc_x, aq, ax = _setup()
    loss_fn = QueryContrastiveLoss(temperature=0.07, negatives="global", symmetric=symmetric)
    b = aq.shape[0] // world
    sl = slice(rank * b, (rank + 1) * b)
    loss = loss_fn(enc_q(aq[sl]), enc_x(ax[sl]))
    loss.backward()
    params = list(enc_q.parameters()) + list(enc_x.parameters()) + [loss_fn.logit_scale]
    return loss.detach(), [p.grad for p in params]


def _worker(rank, world, port, symmetric, out_path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    loss, grads = _loss_and_grads(symmetric, rank, world)
    # What DDP does: average the loss for logging and the parameter gradients.
    dist.all_reduce(loss)
    for g in grads:
        dist.all_reduce(g)
    if rank == 0:
        torch.save({"loss": loss / world, "grads": [g / world for g in grads]}, out_path)
    dist.barrier()  # neither rank exits while the other still uses gloo
    exit_process(0)  # skips the teardown that may abort with a live gloo group


@pytest.mark.parametrize("symmetric", [False, True])
def test_global_negatives_two_ranks_equal_one_rank_with_double_batch(tmp_path, symmetric, free_port):
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, free_port, symmetric, str(out)), nprocs=2, join=True)
    two = torch.load(out)
    loss, grads = _loss_and_grads(symmetric)
    torch.testing.assert_close(two["loss"], loss)
    for g2, g1 in zip(two["grads"], grads):
        torch.testing.assert_close(g2, g1)
    # Local negatives on each rank would be a different (easier) objective.
    local = QueryContrastiveLoss(negatives="local", symmetric=symmetric)
    enc_q, enc_x, aq, ax = _setup()
    halves = (local(enc_q(aq[:4]), enc_x(ax[:4])) + local(enc_q(aq[4:]), enc_x(ax[4:]))) / 2
    assert abs(float(halves.detach()) - float(loss)) > 1e-3


def test_text_reconstruction_loss_against_hand_computation():
    torch.manual_seed(0)
    ids = torch.tensor([[101, 5, 6, 102, 0], [101, 7, 102, 0, 0]])
    mask = (ids != 0).long()
    logits = torch.randn(2, 5, 200)
    logp = logits.log_softmax(-1)
    # Row 0 predicts 5, 6, 102 at positions 0-2; row 1 predicts 7, 102 at positions 0-1.
    terms = [logp[0, 0, 5], logp[0, 1, 6], logp[0, 2, 102], logp[1, 0, 7], logp[1, 1, 102]]
    expected = -sum(terms) / len(terms)
    torch.testing.assert_close(text_reconstruction_loss(logits, ids, mask), expected)


def test_vision_reconstruction_loss_counts_masked_tokens_only():
    target = torch.zeros(1, 3, 2)
    pred = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert float(vision_reconstruction_loss(pred, target, mask)) == pytest.approx((1 + 1 + 4 + 0) / 4)
