"""Visual-text matching loss L_otm of the pre-training stage (paper §4.2, summed in Eq. 3).

Each positive (visual i, text i) gets two hard negatives drawn from the VTC similarities: a text
j != i for visual i and a visual item j != i for text i, with probability softmax(sim) over the
other items of the batch (ALBEF's scheme). The fusion encoder reads the 3B pairs laid out by
`vtm_pairs` and a 2-way head on its [CLS] scores them; `vtm_loss` is the cross-entropy of those
scores with labels 1 for the B positives and 0 for the 2B negatives.

The loss takes the head's logits rather than owning the head: the head is a layer of the
pre-training model next to the fusion encoder it reads (optimizer groups, checkpoints, freezing
go with the model), and the loss stays a pure function of tensors.
"""
import torch
import torch.nn.functional as F


def _check_square(name, sim):
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"{name}: expected a square [B, B] similarity matrix, got shape {tuple(sim.shape)}")
    if sim.shape[0] < 2:
        raise ValueError(f"{name}: a batch of {sim.shape[0]} has no negative to sample; VTM needs B >= 2")


def _draw_off_diagonal(sim, generator):
    # -inf on the diagonal before the softmax: the same distribution as zeroing the positive's weight
    # and renormalising, without underflow when the positive dominates its row.
    eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    weights = sim.detach().float().masked_fill(eye, float("-inf")).softmax(dim=1)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def sample_hard_negatives(sim_v2t, sim_t2v, generator=None):
    """sim_v2t, sim_t2v [B, B] (row i: visual i over the texts, text i over the visual items) ->
    (neg_text, neg_visual), LongTensor[B] each, neg_text[i] != i and neg_visual[i] != i.

    `generator` (a torch.Generator on sim's device) makes the draws reproducible."""
    _check_square("sim_v2t", sim_v2t)
    _check_square("sim_t2v", sim_t2v)
    if sim_v2t.shape != sim_t2v.shape:
        raise ValueError(f"sim_v2t {tuple(sim_v2t.shape)} and sim_t2v {tuple(sim_t2v.shape)} must have the same shape")
    return _draw_off_diagonal(sim_v2t, generator), _draw_off_diagonal(sim_t2v, generator)


def vtm_pairs(neg_text, neg_visual):
    """-> (visual_idx, text_idx), LongTensor[3B] each: the batch rows of the pairs the fusion encoder
    scores, in the order `vtm_loss` labels them: B positives (i, i), B (visual i, text neg_text[i]),
    B (visual neg_visual[i], text i)."""
    pos = torch.arange(neg_text.shape[0], device=neg_text.device)
    return torch.cat([pos, pos, neg_visual]), torch.cat([pos, neg_text, pos])


def vtm_loss(logits):
    """logits [3B, 2] of the pairs laid out by `vtm_pairs` -> mean cross-entropy, class 1 = matched."""
    if logits.dim() != 2 or logits.shape[1] != 2 or logits.shape[0] % 3:
        raise ValueError(f"vtm logits: expected [3B, 2] (positives, then two sets of negatives), got {tuple(logits.shape)}")
    b = logits.shape[0] // 3
    labels = torch.zeros(3 * b, dtype=torch.long, device=logits.device)
    labels[:b] = 1
    return F.cross_entropy(logits.float(), labels)
