"""Masked language modelling L_mlm of the pre-training stage (paper §4.2, summed in Eq. 3): BERT's
15% masking of the item text (80% [MASK], 10% a random token, 10% kept), a prediction head tied
to the word embeddings, and the cross-entropy on the chosen tokens.

`mask_tokens` is written here rather than borrowed from transformers'
`DataCollatorForLanguageModeling.torch_mask_tokens`: that one draws its random replacements from
the whole vocabulary, special tokens included, takes its generator only as an attribute of the
collator, builds its masks on the CPU and overwrites its input in place.
"""
import torch
import torch.nn.functional as F
from cn_clip.clip.configuration_bert import BertConfig
from cn_clip.clip.modeling_bert import BertLMPredictionHead

IGNORE_INDEX = -100  # F.cross_entropy's ignore_index: labels of positions that predict nothing
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the chosen tokens; the rest are kept as they are


def mask_tokens(input_ids, attention_mask, mask_id, vocab_size, special_ids, prob=0.15, generator=None):
    """input_ids, attention_mask [B, L] -> (masked_ids, labels), both [B, L] LongTensor.

    Each real token (attention_mask 1, id not in special_ids) is chosen with probability `prob`;
    a chosen token becomes mask_id (80%), a random non-special id below vocab_size (10%) or stays
    (10%). labels hold the original id at chosen positions and IGNORE_INDEX elsewhere. input_ids is not
    modified; `generator` (on input_ids' device) makes the draw reproducible."""
    if input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mlm probability must be in [0, 1], got {prob}")
    device = input_ids.device
    special = torch.tensor(sorted({*special_ids, mask_id}), dtype=torch.long, device=device)
    if int(special.min()) < 0 or int(special.max()) >= vocab_size:
        raise ValueError(f"special ids {special.tolist()} must lie in [0, vocab_size={vocab_size})")
    real = attention_mask.bool() & ~torch.isin(input_ids, special)
    chosen = real & (torch.rand(input_ids.shape, generator=generator, device=device) < prob)
    action = torch.rand(input_ids.shape, generator=generator, device=device)
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
    allowed[special] = False
    pool = allowed.nonzero().squeeze(1)
    random_ids = pool[torch.randint(len(pool), input_ids.shape, generator=generator, device=device)]
    masked = torch.where(chosen & (action < MASK_SHARE), torch.full_like(input_ids, mask_id), input_ids)
    to_random = chosen & (action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE)
    masked = torch.where(to_random, random_ids, masked)
    return masked, input_ids.masked_fill(~chosen, IGNORE_INDEX)


def mlm_loss(logits, labels):
    """logits [..., V], labels [...] with IGNORE_INDEX where nothing is predicted -> mean cross-entropy over
    the chosen tokens; 0 (still attached to the graph) when a batch happens to have none."""
    logits, labels = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def mlm_sums(logits, labels, rows, batch_size):
    """Per sample: (sum of the cross-entropies of its chosen tokens [batch_size], their number [batch_size]).
    logits [N, V] and labels [N] of the chosen tokens, rows [N] the sample each belongs to. The ratio of the
    totals over any set of samples is mlm_loss over them (losses.reconstruction.token_mean)."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    sums = ce.new_zeros(batch_size).index_add(0, rows, ce)
    return sums, torch.bincount(rows, minlength=batch_size).to(ce.dtype)


class TiedMLMHead(BertLMPredictionHead):
    """BERT's prediction head as the cn_clip text tower defines it (dense, GELU, LayerNorm, then a
    decoder to the vocabulary plus its own bias), whose decoder weight is the word embedding matrix
    itself: forward maps [..., hidden] to vocabulary logits [..., V]."""

    def __init__(self, word_embeddings, hidden):
        vocab, width = word_embeddings.weight.shape
        if width != hidden:
            raise ValueError(f"TiedMLMHead: hidden size {hidden} differs from the word embedding width {width}; "
                             "the decoder can only share embeddings of the hidden size")
        super().__init__(BertConfig(vocab_size_or_config_json_file=vocab, hidden_size=hidden))
        self.decoder.weight = word_embeddings.weight
