"""Tokenization with cn_clip's vocabulary: same ids as cn_clip, fixed lengths, counted truncation."""
import torch

from datasets.tokenizer import Tokenizer

TEXTS = [
    "夏季新款女装连衣裙 宽松显瘦 韩版 ins超火的裙子 2024",
    "iPhone15 手机壳 透明防摔！！",
    "Café NAÏVE 测试 ①②",
    "",
    "红色杯子|今天买的杯子|好看" * 10,
]


def test_ids_match_cn_clip_tokenize_at_query_and_text_lengths():
    from cn_clip.clip import tokenize

    tok = Tokenizer()
    assert tok.vocab_size == 21128
    for max_len in (20, 90):
        ids, mask = tok(TEXTS, max_len)
        assert ids.shape == mask.shape == (len(TEXTS), max_len)
        assert ids.dtype == mask.dtype == torch.long
        assert torch.equal(ids, tokenize(TEXTS, context_length=max_len))
        assert torch.equal(mask, (ids != 0).long())
        assert bool((ids[:, 0] == tok.cls_id).all())
        # [SEP] closes every row, right before the padding
        assert bool((ids.gather(1, mask.sum(1, keepdim=True) - 1) == tok.sep_id).all())


def test_truncation_is_counted():
    tok = Tokenizer()
    assert tok.truncation_rate == 0.0
    ids, mask = tok(["一二三四五六七八", "一二三"], 6)  # 8 and 3 tokens: the first is cut
    assert ids[0].tolist() == [tok.cls_id, *ids[0, 1:5].tolist(), tok.sep_id]
    assert mask.sum(1).tolist() == [6, 5]
    assert tok.truncation_rate == 0.5
    tok(["一二", "三"], 6)
    assert tok.counts.as_dict() == {"texts": 4, "truncated": 1}
    assert tok.truncation_rate == 0.25
