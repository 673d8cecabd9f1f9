"""Losses of the reconstruction heads (Eq. 7): L_re,q (cross-entropy) and L_re,v (regression)."""
import torch.nn.functional as F

from losses.mlm import IGNORE_INDEX


def text_reconstruction_sums(logits, ids, mask):
    """Per query: (sum of the next-token cross-entropies [B], number of predicted tokens [B]); logits [B,L,V]
    at position i against ids[:, i+1], padding ignored. Their totals' ratio is the loss over any set of
    queries, which a mean of per-query or per-micro-batch means is not (queries differ in length)."""
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX,
                         reduction="none")
    return ce.view(target.shape).sum(dim=1), (target != IGNORE_INDEX).sum(dim=1).to(ce.dtype)


def token_mean(sums, counts):
    """The mean over all tokens of per-sample (sums, counts); 0 (still attached to the graph) without tokens."""
    return sums.sum() / counts.sum().clamp(min=1)


def text_reconstruction_loss(logits, ids, mask):
    """Next-token cross-entropy: logits [B,L,V] at position i against ids[:, i+1], averaged over the batch's
    tokens; padding ignored."""
    return token_mean(*text_reconstruction_sums(logits, ids, mask))


def vision_reconstruction_loss(pred, target, mask):
    """Mean squared error over the masked tokens only: pred, target [B,P,W], mask [B,P] bool."""
    return F.mse_loss(pred[mask].float(), target[mask].float())
