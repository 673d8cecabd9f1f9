"""Query-guided three-way contrastive loss (paper Eq. 5-6).

L_q,x = -log softmax_i(s(q, x_i) / tau)[positive], x in {u, v, t}, s the cosine similarity and tau
learnable. Negatives are the other items of the local batch (the paper's N = batch size) or,
with `loss.negatives: global`, of the batches of all ranks, gathered with gradient.
"""
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from losses.mlm import IGNORE_INDEX

# loss.negatives: the other items of this rank's batch, or of the batches of all ranks
NEGATIVES = ("local", "global")


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the gradient of its own slice summed over all ranks.

    Each rank's loss depends on every rank's features; summing those contributions (then DDP's
    averaging of parameter gradients) gives exactly the gradient of the mean loss over the global
    batch. An all_reduce is used instead of reduce_scatter, which the gloo backend lacks.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.rank, ctx.size = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


def gather_features(x):
    """[B, D] on each rank -> [world * B, D] in rank order, differentiable; every rank must pass the same B."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def _cross_entropy(logits, labels):
    if (labels == IGNORE_INDEX).all():  # no anchor left: zero, with every parameter still in the graph (DDP)
        return 0.0 * logits.sum()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def _rank_offset(batch):
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() * batch
    return 0


@dataclass(frozen=True)
class ContrastiveSpec:
    """The settings of loss: initial tau, whether it learns, the clamp of 1/tau, negatives (one of NEGATIVES),
    whether the item -> query direction is added."""
    temperature: float
    learn_temperature: bool
    max_logit_scale: float
    negatives: str
    symmetric: bool


class QueryContrastiveLoss(nn.Module):
    def __init__(self, temperature=0.07, learn_temperature=True, max_logit_scale=100.0, negatives="local",
                 symmetric=False):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)
        self.max_log_scale = math.log(max_logit_scale)
        self.negatives = negatives
        self.symmetric = symmetric

    def scale(self):
        """1/tau, clamped at max_logit_scale (no gradient past the clamp)."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def forward(self, q, x, valid=None):
        """q, x [B, D] (any norm; row i of each is a positive pair) -> mean InfoNCE over this rank's rows.
        `valid` (bool [B]) leaves rows out as anchors (they stay negatives); none valid gives a zero loss."""
        q, x = F.normalize(q, dim=-1), F.normalize(x, dim=-1)
        scale = self.scale()
        labels = torch.arange(q.shape[0], device=q.device)
        if self.negatives == "global":
            labels = labels + _rank_offset(q.shape[0])
        if valid is not None:
            labels = labels.masked_fill(~valid.bool(), IGNORE_INDEX)
        if self.negatives == "global":
            logits = scale * q @ gather_features(x).t()
            reverse = scale * x @ gather_features(q).t() if self.symmetric else None
        else:
            logits = scale * q @ x.t()
            reverse = logits.t()
        loss = _cross_entropy(logits, labels)
        if self.symmetric:
            loss = (loss + _cross_entropy(reverse, labels)) / 2
        return loss
