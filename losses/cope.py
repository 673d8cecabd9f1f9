"""The training losses of COPE (Bai et al., "Cross-Domain Product Representation Learning", the ROPE dataset) on
Real20M's two domains: goods (product pages) and micro-videos (COPE's short videos).

Contrastive terms, each a symmetric InfoNCE (losses.query_contrastive.QueryContrastiveLoss) between row i of
two feature sets, the other rows of the batch the negatives; the names are loss.cope.weights' keys:

- train.mode=ft (a batch of goods-video pairs of one query each): cross_fused (goods fused <-> video fused),
  cross_text (goods text <-> video text), cross_visual (goods visual <-> video visual), inner_goods and
  inner_video (each domain's text <-> visual). COPE's terms with live streams, its mixed-feature ones (e.g.
  goods text <-> video fused) and its same-domain positives of one product do not exist here.
- train.mode=query (COPE-Q: the query text is a third domain; a batch holds one domain): query_fused,
  query_text and query_visual (query <-> the item's fused, text and visual feature), and the batch's domain's
  inner term (the other domain's is zero).

Classification (weight `cls`): the class of a sample is the query it was drawn for (Real20M has no product ids).
An item under k queries is drawn under each of them in turn, so the softmax cross-entropy with the drawn query as
the one target is, over an epoch, the cross-entropy against the soft target 1/k on each of its queries (softmax
multi-label training as in Mahajan et al., ECCV 2018); the item's other queries that happen to be in the same
batch count as negatives. `ClassCentres` keeps one unit-length centre per query on the CPU, momentum-updated from
the fused features of its samples (non-parametric, as OIM, Xiao et al., CVPR 2017) instead of COPE's PartialFC
weights trained by the optimizer: only the rows of the batch's classes and of `negatives` sampled other classes
go to the device, so GPU memory does not grow with the number of queries (the CPU holds num_classes x dim
float32: 2 GB for 1 M queries of 512-d features).
"""
import torch
import torch.nn.functional as F
from torch import nn

from losses.query_contrastive import gather_features

PAIR_TERMS = ("cross_fused", "cross_text", "cross_visual", "inner_goods", "inner_video")
QUERY_TERMS = ("query_fused", "query_text", "query_visual", "inner_goods", "inner_video")


def pair_terms(contrastive, goods, video, valid=None):
    """train.mode=ft: goods and video {"fused", "text", "visual"} [B, D] (row i of each: one query's pair;
    `valid` bool [B] leaves replaced rows out as anchors) -> {"loss_<term>"} of PAIR_TERMS."""
    return {"loss_cross_fused": contrastive(goods["fused"], video["fused"], valid=valid),
            "loss_cross_text": contrastive(goods["text"], video["text"], valid=valid),
            "loss_cross_visual": contrastive(goods["visual"], video["visual"], valid=valid),
            "loss_inner_goods": contrastive(goods["text"], goods["visual"]),
            "loss_inner_video": contrastive(video["text"], video["visual"])}


def query_terms(contrastive, query, item, goods):
    """train.mode=query: query [B, D] and the item's {"fused", "text", "visual"} [B, D] of one domain (`goods`:
    True for goods) -> {"loss_<term>"} of QUERY_TERMS, the other domain's inner term zero."""
    inner = contrastive(item["text"], item["visual"])
    zero = inner.new_zeros(())
    return {"loss_query_fused": contrastive(query, item["fused"]),
            "loss_query_text": contrastive(query, item["text"]),
            "loss_query_visual": contrastive(query, item["visual"]),
            "loss_inner_goods": inner if goods else zero, "loss_inner_video": zero if goods else inner}


class ClassCentres(nn.Module):
    """Unit-length class centres [num_classes, dim] on the CPU. They are buffers (saved in checkpoints) that
    .to()/.cuda() leave on the CPU and DDP does not broadcast: every rank applies the same all-gathered update."""

    def __init__(self, num_classes, dim, negatives, temperature, momentum):
        super().__init__()
        self.negatives, self.temperature, self.momentum = int(negatives), float(temperature), float(momentum)
        self.register_buffer("centres", torch.zeros(num_classes, dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def _apply(self, fn, recurse=True):
        return self

    @property
    def num_classes(self):
        return self.centres.shape[0]

    def _check(self, labels):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"query index {int(labels.max())} of the training list is outside loss.cope.num_classes="
                             f"{self.num_classes}: set loss.cope.num_classes to at least the number of training "
                             "queries")

    def sample(self, labels):
        """labels [N] (query indices, CPU) -> (rows: the batch's classes, sorted, then `negatives` other seen classes
        drawn uniformly with torch's global RNG; target: each label's position in rows; known: whether a label's
        class has a centre yet, i.e. an earlier step saw it)."""
        self._check(labels)
        classes = torch.unique(labels)
        others = self.seen.clone()
        others[classes] = False
        others = others.nonzero().squeeze(1)
        rows = torch.cat([classes, others[torch.randperm(others.numel())[:self.negatives]]])
        return rows, torch.searchsorted(classes, labels), self.seen[labels]

    def loss(self, features, labels):
        """features [N, D] on any device, labels [N] -> mean cross-entropy of cos(feature, centre) / temperature over
        the sampled rows with a centre (`sample`; only those go to the device), the target the row's own class. Rows
        of a class without a centre yet are left out; with none left the loss is zero (every feature still in the
        graph)."""
        rows, target, known = self.sample(labels.detach().cpu().long())
        if not bool(known.any()):
            return 0.0 * features.sum()
        weight = self.centres[rows].to(features.device)
        with torch.autocast(features.device.type, enabled=False):  # float32 cosines, whatever train.amp is
            logits = F.normalize(features.float(), dim=-1) @ weight.t() / self.temperature
        # a batch class without a centre is no candidate either
        logits = logits.masked_fill(~self.seen[rows].to(features.device), float("-inf"))
        known, target = known.to(features.device), target.to(features.device)
        return F.cross_entropy(logits[known], target[known])

    @torch.no_grad()
    def update(self, features, labels):
        """Each class of the batches of all ranks moves to normalise(m * centre + (1 - m) * mean of its rows'
        unit features); a class seen for the first time starts at that mean."""
        features = gather_features(F.normalize(features.detach().float(), dim=-1)).cpu()
        labels = gather_features(labels.detach().long()).cpu()
        self._check(labels)
        classes, inverse = torch.unique(labels, return_inverse=True)
        means = torch.zeros(classes.numel(), features.shape[1]).index_add_(0, inverse, features)
        means /= torch.bincount(inverse, minlength=classes.numel()).unsqueeze(1)
        old = self.seen[classes].unsqueeze(1)
        moved = torch.where(old, self.momentum * self.centres[classes] + (1 - self.momentum) * means, means)
        self.centres[classes] = F.normalize(moved, dim=-1)
        self.seen[classes] = True
