"""Losses of the reconstruction heads (Eq. 7): L_re,q (cross-entropy) and L_re,v (regression)."""
import torch.nn.functional as F

from losses.mlm import IGNORE_INDEX


def text_reconstruction_loss(logits, ids, mask):
    """Next-token cross-entropy: logits [B,L,V] at position i against ids[:, i+1]; padding ignored."""
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX)


def vision_reconstruction_loss(pred, target, mask):
    """Mean squared error over the masked tokens only: pred, target [B,P,W], mask [B,P] bool."""
    return F.mse_loss(pred[mask].float(), target[mask].float())
