"""Pre-training losses (§4.2, Eq. 1-3): VTC, VTM hard negatives, MLM masking and tied head, EPL, their sum."""
import math

import pytest
import torch

from datasets.tokenizer import Tokenizer, cn_clip_vocab_path
from losses import (PRETRAIN_TERMS, EntityClassifier, TiedMLMHead, VTCLoss, entity_prompts, epl_loss, mask_tokens,
                    mlm_loss, pretrain_loss, progressive_weight, pseudo_labels, sample_hard_negatives, vtm_loss,
                    vtm_pairs)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture(scope="module")
def vocab():
    with open(cn_clip_vocab_path(), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def _cos(a, b):
    return sum(i * j for i, j in zip(a, b)) / math.sqrt(sum(i * i for i in a)) / math.sqrt(sum(j * j for j in b))


def _log_softmax(row, k):
    return row[k] - math.log(sum(math.exp(x) for x in row))


# ---- VTC ----

def test_vtc_is_symmetric_infonce_and_returns_detached_similarities():
    torch.manual_seed(0)
    v, t = (torch.randn(5, 4) * 2).requires_grad_(), torch.randn(5, 4)
    loss_fn = VTCLoss(temperature=0.1)
    loss, sim = loss_fn(v, t)
    vl, tl = v.tolist(), t.tolist()
    cos = [[_cos(vl[i], tl[j]) / 0.1 for j in range(5)] for i in range(5)]
    v2t = -sum(_log_softmax(cos[i], i) for i in range(5)) / 5
    t2v = -sum(_log_softmax([cos[j][i] for j in range(5)], i) for i in range(5)) / 5
    assert float(loss.detach()) == pytest.approx((v2t + t2v) / 2, rel=1e-5)
    torch.testing.assert_close(sim, torch.tensor(cos))
    assert not sim.requires_grad
    loss.backward()
    assert v.grad is not None and float(loss_fn.logit_scale.grad) != 0


# ---- VTM ----

def test_hard_negative_is_never_the_positive():
    g = torch.Generator().manual_seed(0)
    for b in range(4, 9):
        # The positives dominate their rows: a sampler that kept them would draw them almost always.
        sim = torch.randn(b, b, generator=g) + 30 * torch.eye(b)
        for _ in range(200):
            neg_text, neg_visual = sample_hard_negatives(sim, sim.t(), generator=g)
            assert neg_text.shape == neg_visual.shape == (b,)
            assert not bool((neg_text == torch.arange(b)).any())
            assert not bool((neg_visual == torch.arange(b)).any())


def test_hard_negative_frequencies_follow_softmax_without_the_positive():
    b, draws = 4, 20000
    g = torch.Generator().manual_seed(1)
    sim_v2t = torch.tensor([[5.0, 2.0, 0.0, -1.0], [1.0, 4.0, 1.5, -0.5], [0.0, 0.5, 3.0, 2.0], [2.5, -1.0, 0.0, 6.0]])
    sim_t2v = torch.tensor([[1.0, -2.0, 0.5, 1.5], [0.0, 2.0, 1.0, -1.0], [2.0, 0.0, 4.0, 0.5], [-0.5, 1.0, 0.0, 1.0]])
    picks = [torch.stack(sample_hard_negatives(sim_v2t, sim_t2v, generator=g)) for _ in range(draws)]
    picks = torch.stack(picks) + b * torch.arange(b)  # [draws, 2, B]: row i's pick j counted at bin i * B + j
    counts_t, counts_v = (torch.bincount(picks[:, k].flatten(), minlength=b * b).view(b, b) for k in (0, 1))
    for sim, counts in ((sim_v2t, counts_t), (sim_t2v, counts_v)):
        chi2 = 0.0
        for i in range(b):
            z = sum(math.exp(float(sim[i, j])) for j in range(b) if j != i)
            for j in range(b):
                if j == i:
                    assert counts[i, j] == 0
                    continue
                expected = draws * math.exp(float(sim[i, j])) / z
                chi2 += (float(counts[i, j]) - expected) ** 2 / expected
        # 4 rows x (3 - 1) degrees of freedom; 26.12 is the chi-square(8) quantile at p = 0.999.
        assert chi2 < 26.12


def test_vtm_pairs_layout_and_loss_against_hand_cross_entropy():
    neg_text, neg_visual = torch.tensor([1, 0]), torch.tensor([1, 0])
    visual_idx, text_idx = vtm_pairs(neg_text, neg_visual)
    assert visual_idx.tolist() == [0, 1, 0, 1, 1, 0]
    assert text_idx.tolist() == [0, 1, 1, 0, 0, 1]
    logits = torch.tensor([[0.2, 1.0], [1.5, -0.5], [2.0, 0.1], [0.0, 0.3], [-1.0, 1.0], [0.7, 0.7]])
    labels = [1, 1, 0, 0, 0, 0]
    rows = logits.tolist()
    expected = -sum(_log_softmax(rows[k], labels[k]) for k in range(6)) / 6
    assert float(vtm_loss(logits)) == pytest.approx(expected, rel=1e-6)


def test_vtm_rejects_bad_shapes():
    with pytest.raises(ValueError, match="B >= 2"):
        sample_hard_negatives(torch.zeros(1, 1), torch.zeros(1, 1))
    with pytest.raises(ValueError, match=r"\[3B, 2\]"):
        vtm_loss(torch.zeros(4, 2))


# ---- MLM ----

def test_mask_id_comes_from_the_vocabulary(tok, vocab):
    assert tok.mask_id == vocab.index("[MASK]")


def _text_batch(tok, unk_id, rows=512, length=40, seed=0):
    """[CLS] body [SEP] [PAD]...: bodies of random ordinary ids with a few [UNK]/[MASK] inside, and
    stray ordinary ids in some padding positions (attention 0)."""
    g = torch.Generator().manual_seed(seed)
    specials = (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, unk_id)
    ids = torch.randint(1000, tok.vocab_size, (rows, length), generator=g)
    lengths = torch.randint(4, length + 1, (rows,), generator=g)
    pos = torch.arange(length).expand(rows, length)
    mask = (pos < lengths[:, None]).long()
    inner = torch.rand(rows, length, generator=g) < 0.05
    ids = torch.where(inner, torch.tensor(specials[3:])[torch.randint(2, (rows, length), generator=g)], ids)
    ids[:, 0] = tok.cls_id
    ids[pos == (lengths[:, None] - 1)] = tok.sep_id
    ids = torch.where((mask == 0) & (torch.rand(rows, length, generator=g) < 0.8), tok.pad_id, ids)
    return ids, mask, specials


def test_mask_tokens_shares_and_labels(tok, vocab):
    ids, mask, specials = _text_batch(tok, vocab.index("[UNK]"))
    original = ids.clone()
    masked, labels = mask_tokens(ids, mask, tok.mask_id, tok.vocab_size, specials,
                                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, original)
    real = mask.bool() & ~torch.isin(ids, torch.tensor(specials))
    chosen = labels != -100
    assert not bool((chosen & ~real).any())  # never a special token nor padding
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])
    n, k = int(real.sum()), int(chosen.sum())
    assert abs(k / n - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n)
    to_mask = int((masked[chosen] == tok.mask_id).sum())
    kept = int((masked[chosen] == ids[chosen]).sum())
    to_random = k - to_mask - kept
    for share, p in ((to_mask / k, 0.8), (to_random / k, 0.1), (kept / k, 0.1)):
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / k)
    replaced = chosen & (masked != tok.mask_id) & (masked != ids)
    assert not bool(torch.isin(masked[replaced], torch.tensor(specials)).any())


def test_random_replacements_avoid_special_ids_and_cover_the_rest():
    # Tiny vocabulary where half the ids are special: drawing from all ids would hit them often.
    ids = torch.full((200, 10), 5)
    masked, labels = mask_tokens(ids, torch.ones_like(ids), 3, 8, (0, 1, 2), prob=1.0,
                                 generator=torch.Generator().manual_seed(0))
    assert bool((labels == 5).all())
    assert set(masked.unique().tolist()) == {3, 4, 5, 6, 7}


def test_mask_tokens_is_reproducible_with_a_generator(tok, vocab):
    ids, mask, specials = _text_batch(tok, vocab.index("[UNK]"), rows=8)
    first = mask_tokens(ids, mask, tok.mask_id, tok.vocab_size, specials, generator=torch.Generator().manual_seed(3))
    again = mask_tokens(ids, mask, tok.mask_id, tok.vocab_size, specials, generator=torch.Generator().manual_seed(3))
    other = mask_tokens(ids, mask, tok.mask_id, tok.vocab_size, specials, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other[1])


def test_mlm_loss_against_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[-100, 4, -100], [2, -100, 0]])
    rows = logits.tolist()
    expected = -(_log_softmax(rows[0][1], 4) + _log_softmax(rows[1][0], 2) + _log_softmax(rows[1][2], 0)) / 3
    assert float(mlm_loss(logits, labels)) == pytest.approx(expected, rel=1e-6)
    empty = mlm_loss(logits.requires_grad_(), torch.full((2, 3), -100))
    assert empty.requires_grad and float(empty.detach()) == 0.0


def test_tied_head_decoder_is_the_embedding_and_trains_it():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(30, 8)
    head = TiedMLMHead(emb, 8)
    assert head.decoder.weight is emb.weight
    assert sum(p is emb.weight for p in head.parameters()) == 1
    before = emb.weight.detach().clone()
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    mlm_loss(head(torch.randn(2, 4, 8)), torch.tensor([[3, -100, 7, -100], [-100, 12, -100, -100]])).backward()
    opt.step()
    assert not torch.equal(emb.weight.detach(), before)
    with pytest.raises(ValueError, match="word embedding width 8"):
        TiedMLMHead(emb, 16)


# ---- EPL ----

def test_progressive_weight():
    assert progressive_weight(0, 0.7) == 0.5
    values = [progressive_weight(t / 2, 0.7) for t in range(40)]  # fractional epochs too
    assert all(a < b for a, b in zip(values, values[1:]))
    assert progressive_weight(1, 0.7) == pytest.approx(1 / (1 + math.exp(-0.7)))
    assert progressive_weight(60, 0.7) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="epoch"):
        progressive_weight(-1, 0.7)


def test_epl_loss_against_hand_computation():
    torch.manual_seed(0)
    logits = [torch.randn(2, m) for m in (2, 3, 4)]
    labels = [torch.rand(2, m).softmax(-1) for m in (2, 3, 4)]
    w = 0.8
    per_sample = []
    for b in range(2):
        terms = []
        for lv in range(3):
            row, p = logits[lv][b].tolist(), labels[lv][b].tolist()
            terms.append(-sum(p[m] * _log_softmax(row, m) for m in range(len(row))))
        per_sample.append((1 - w) * terms[0] + terms[1] + w * terms[2])
    assert float(epl_loss(logits, labels, w)) == pytest.approx(sum(per_sample) / 2, rel=1e-6)


def test_pseudo_labels_follow_eq1_without_gradient():
    torch.manual_seed(0)
    visual = torch.randn(3, 4, requires_grad=True)
    entities = [torch.randn(m, 4, requires_grad=True) for m in (2, 3, 5)]
    labels = pseudo_labels(visual, entities, 20.0)
    for e, p in zip(entities, labels):
        assert not p.requires_grad
        torch.testing.assert_close(p.sum(-1), torch.ones(3))
        for b in range(3):
            sims = [math.exp(_cos(visual[b].tolist(), row) * 20.0) for row in e.tolist()]
            torch.testing.assert_close(p[b], torch.tensor([s / sum(sims) for s in sims]))


def test_epl_gradient_reaches_the_logits_only():
    logits = [torch.randn(2, m, requires_grad=True) for m in (2, 3, 4)]
    raw = [torch.randn(2, m, requires_grad=True) for m in (2, 3, 4)]
    epl_loss(logits, [r.softmax(-1) for r in raw], 0.6).backward()
    assert all(c.grad is not None and float(c.grad.abs().sum()) > 0 for c in logits)
    assert all(r.grad is None for r in raw)


def test_entity_classifier_mean_pools_real_tokens_only():
    torch.manual_seed(0)
    clf = EntityClassifier(4, (2, 3, 5))
    u = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = clf(u, mask)
    noisy = u.clone()
    noisy[0, 3:] = 1e4
    for head, c, c_noisy in zip(clf.heads, out, clf(noisy, mask)):
        torch.testing.assert_close(c[0], head(u[0, :3].mean(0)))
        torch.testing.assert_close(c[1], head(u[1].mean(0)))
        torch.testing.assert_close(c_noisy, c)
    assert [c.shape for c in out] == [(2, 2), (2, 3), (2, 5)]


def test_entity_prompts_use_distinct_in_vocabulary_level_words(tok, vocab):
    prompts = [entity_prompts(["家居生活", "空气炸锅"], level) for level in (1, 2, 3)]
    assert prompts[0] == ["一级 家居生活", "一级 空气炸锅"]
    entity_ids = tok(["家居生活"], 12)[0][0, 1:5]
    level_ids = []
    for level_prompts in prompts:
        ids, _ = tok(level_prompts, 12)
        assert not bool((ids == vocab.index("[UNK]")).any())
        level_ids.append(tuple(ids[0, 1:3].tolist()))  # the two characters of the level word, then the entity
        assert torch.equal(ids[0, 3:7], entity_ids)
    assert len(set(level_ids)) == 3
    with pytest.raises(ValueError, match="1..3"):
        entity_prompts(["家居"], 0)
    with pytest.raises(ValueError, match=r"positions \[1\]"):
        entity_prompts(["家居", " "], 2)


# ---- Eq. 3 ----

def test_pretrain_loss_reports_terms_and_weighted_total():
    terms = {name: torch.tensor(float(i + 1)) for i, name in enumerate(PRETRAIN_TERMS)}
    out = pretrain_loss(terms)
    assert set(out) == {"loss", "loss_vtc", "loss_otm", "loss_mlm", "loss_epl"}
    assert float(out["loss"]) == 1 + 2 + 3 + 4
    assert float(pretrain_loss(terms, {"epl": 0.5, "vtc": 2.0})["loss"]) == 2 * 1 + 2 + 3 + 0.5 * 4
    assert set(pretrain_loss({"epl": terms["epl"]})) == {"loss", "loss_epl"}
    with pytest.raises(ValueError, match="itm"):
        pretrain_loss({"itm": terms["vtc"]})
