"""Three-level Entity Prompt Learning L_epl (paper §4.2, Eq. 1-2).

Prompts "[level] ENTITY" for the entity lists of the three levels (coarse L1 to fine L3) are
encoded by the frozen text encoder into e^l [M_l, D]. Pseudo-labels (Eq. 1) are the softmax over
each level's entities of the cosine similarity with the visual feature v over a temperature; the
fusion feature u, mean-pooled over its real tokens and mapped by one linear layer per level, gives
the predictions c^l, and Eq. 2 is their cross-entropy with the pseudo-labels, the coarse level
weighted by 1 - w_t and the fine one by w_t, w_t rising from 0.5 towards 1 over training.

The level token is a plain word of the vocabulary, 一级 / 二级 / 三级 ("first / second / third
level", as e-commerce category levels are named): the prompter's text encoder is frozen and has
learnt these words, whereas the vocabulary's [unusedN] tokens have untrained embeddings (and
BertTokenizer would split them into pieces).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

LEVEL_WORDS = ("一级", "二级", "三级")
NUM_LEVELS = len(LEVEL_WORDS)


def _check_levels(name, items):
    if len(items) != NUM_LEVELS:
        raise ValueError(f"{name}: expected one entry per entity level ({NUM_LEVELS}), got {len(items)}")


def entity_prompts(entities, level):
    """entities: list of str of one level, level in 1..3 -> the prompts "<level word> <entity>"."""
    if not isinstance(level, int) or not 1 <= level <= NUM_LEVELS:
        raise ValueError(f"entity level must be one of 1..{NUM_LEVELS}, got {level!r}")
    blank = [i for i, e in enumerate(entities) if not isinstance(e, str) or not e.strip()]
    if blank:
        raise ValueError(f"level-{level} entities at positions {blank} are not non-empty strings")
    return [f"{LEVEL_WORDS[level - 1]} {e.strip()}" for e in entities]


def progressive_weight(epoch, alpha):
    """w_t = 1 / (1 + exp(-alpha * t)): 0.5 at t = 0, rising to 1 for alpha > 0 (alpha = 0 keeps 0.5).

    t counts epochs; a fraction (global step / steps per epoch) gives the same curve updated every
    step, an integer gives the paper's per-epoch steps."""
    if epoch < 0 or alpha < 0:
        raise ValueError(f"progressive_weight: epoch and alpha must be >= 0, got epoch={epoch}, alpha={alpha}")
    return 1.0 / (1.0 + math.exp(-alpha * epoch))


@torch.no_grad()
def pseudo_labels(visual, entity_embeddings, scale):
    """Eq. 1. visual [B, D], entity_embeddings: 3 tensors [M_l, D] (prompt [CLS] embeddings),
    scale = 1/tau (e.g. the prompter's contrastive `scale()`) -> 3 tensors p^l [B, M_l] whose rows
    sum to 1, without gradient: they are targets."""
    _check_levels("entity_embeddings", entity_embeddings)
    v = F.normalize(visual.float(), dim=-1)
    return [(scale * v @ F.normalize(e.float(), dim=-1).t()).softmax(dim=-1) for e in entity_embeddings]


def epl_loss(logits, pseudo_labels, w_t):
    """Eq. 2, averaged over the batch. logits: 3 tensors [B, M_l] before the softmax (c^l is their
    softmax); pseudo_labels: 3 tensors p^l [B, M_l] of probabilities, targets that get no gradient;
    w_t from `progressive_weight`."""
    _check_levels("epl logits", logits)
    _check_levels("epl pseudo_labels", pseudo_labels)
    total = 0.0
    for level, (weight, c, p) in enumerate(zip((1.0 - w_t, 1.0, w_t), logits, pseudo_labels), start=1):
        if c.shape != p.shape:
            raise ValueError(f"level {level}: logits {tuple(c.shape)} and pseudo-labels {tuple(p.shape)} differ")
        total = total + weight * F.cross_entropy(c.float(), p.detach().float())
    return total


class EntityClassifier(nn.Module):
    """c^l logits: the fusion tokens u [B, L, D] averaged over the real tokens (attention_mask 1),
    then one linear layer per level to its M_l entities."""

    def __init__(self, dim, sizes):
        super().__init__()
        _check_levels("entity list sizes", sizes)
        self.heads = nn.ModuleList(nn.Linear(dim, m) for m in sizes)

    def forward(self, u, attention_mask):
        """-> 3 tensors [B, M_l]."""
        if attention_mask.shape != u.shape[:2]:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match tokens {tuple(u.shape[:2])}")
        m = attention_mask.to(u.dtype).unsqueeze(-1)
        pooled = (u * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        return [head(pooled) for head in self.heads]
