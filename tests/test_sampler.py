"""The domain-pure distributed batch sampler (docs/DATA_FORMAT.md, data.train_file)."""
import random
from collections import Counter

import pytest

from datasets.annotations import TrainEntry
from datasets.sampler import DomainBatchSampler
from datasets.train_index import load_train_index


def make_entries(n, seed=0):
    """n queries: a third goods only, a third videos only, a third both; 1-3 items each (pids unique)."""
    rng = random.Random(seed)
    entries, next_pid = [], 1000
    for i in range(n):
        kind = i % 3
        goods = [] if kind == 1 else list(range(next_pid, next_pid + rng.randint(1, 3)))
        next_pid += 10
        videos = [] if kind == 0 else list(range(next_pid, next_pid + rng.randint(1, 3)))
        next_pid += 10
        entries.append(TrainEntry(f"query {i}", goods, videos))
    return entries


def batches(entries, batch_size, rank=0, world_size=1, seed=0, epoch=0):
    sampler = DomainBatchSampler(entries, batch_size, rank, world_size, seed=seed)
    sampler.set_epoch(epoch)
    out = list(sampler)
    assert len(out) == len(sampler)
    return out


def test_batches_are_domain_pure_and_draw_from_the_query_lists():
    entries = make_entries(300)
    out = batches(entries, batch_size=8)
    assert out and all(len(b) == 8 for b in out)
    for batch in out:
        assert len({s.domain for s in batch}) == 1
        for s in batch:
            entry = entries[s.query_index]
            assert s.pid in (entry.goods if s.domain == "goods" else entry.videos)
            assert s.epoch == 0
    seen = [s.query_index for b in out for s in b]
    assert len(seen) == len(set(seen))  # one sample per query per epoch


def test_only_the_remainder_of_each_domain_is_dropped():
    entries = make_entries(301)
    for world_size in (1, 2, 3):
        sampler = DomainBatchSampler(entries, 7, 0, world_size, seed=3)
        plan = sampler.global_batches(0)
        per_domain = Counter(s.domain for b in plan for s in b)
        # recount the epoch's draws independently of the batching: every query gives one sample
        drawn = Counter(s.domain for s in _all_draws(entries, seed=3))
        for domain, n in drawn.items():
            assert per_domain[domain] == n // (7 * world_size) * (7 * world_size)
        assert len(sampler) == sum(n // (7 * world_size) for n in drawn.values())


def _all_draws(entries, seed):
    """The epoch-0 draws with a batch size of 1 on 1 rank: nothing is dropped."""
    return [s for b in DomainBatchSampler(entries, 1, 0, 1, seed=seed).global_batches(0) for s in b]


def test_same_seed_same_batches_other_epoch_or_seed_differ():
    entries = make_entries(200)
    first = batches(entries, 5, seed=11, epoch=2)
    assert first == batches(entries, 5, seed=11, epoch=2)
    assert first != batches(entries, 5, seed=11, epoch=3)
    assert first != batches(entries, 5, seed=12, epoch=2)


def test_set_epoch_switches_plan_and_start_batch_resumes_mid_epoch():
    entries = make_entries(200)
    sampler = DomainBatchSampler(entries, 4, seed=1)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.set_epoch(1, start_batch=5)
    assert len(sampler) == len(full) - 5
    assert list(sampler) == full[5:]
    with pytest.raises(ValueError, match="start_batch"):
        sampler.set_epoch(1, start_batch=len(full) + 1)


def test_ranks_are_disjoint_agree_on_domain_and_concatenate_to_the_one_rank_batches():
    entries = make_entries(400)
    one = batches(entries, 8, rank=0, world_size=1, seed=5)
    r0 = batches(entries, 4, rank=0, world_size=2, seed=5)
    r1 = batches(entries, 4, rank=1, world_size=2, seed=5)
    assert len(r0) == len(r1) == len(one)
    for step, (a, b, whole) in enumerate(zip(r0, r1, one)):
        assert a + b == whole, step
        assert {s.domain for s in a} == {s.domain for s in b}  # every rank is in the same domain
        queries = [s.query_index for s in a + b]
        assert len(queries) == len(set(queries))  # no query twice in a global batch
    flat0 = {(s.query_index, s.pid) for b in r0 for s in b}
    flat1 = {(s.query_index, s.pid) for b in r1 for s in b}
    assert not flat0 & flat1


def test_lines_of_one_query_text_never_meet_in_a_global_batch(tmp_path):
    # 10 query texts on 4 lines each (the authors' list repeats texts): 4 lines of one text would be 4 queries
    lines = [f"查询{k}\t{100 * k + copy}\tNone" for copy in range(4) for k in range(10)]
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    index = load_train_index(str(path), str(tmp_path / "cache"))
    assert len(index) == 10 and index.goods(3) == [300, 301, 302, 303]
    drawn = set()
    for epoch in range(5):
        r0 = batches(index, 2, rank=0, world_size=2, seed=1, epoch=epoch)
        r1 = batches(index, 2, rank=1, world_size=2, seed=1, epoch=epoch)
        assert len(r0) == len(r1) == 2
        for a, b in zip(r0, r1):
            texts = [index.query(s.query_index) for s in a + b]
            assert len(texts) == len(set(texts)), (epoch, texts)
            drawn |= {s.pid for s in a + b}
    assert drawn <= {100 * k + copy for copy in range(4) for k in range(10)} and len(drawn) > 10


def test_domain_is_drawn_half_half_and_items_uniformly():
    both = [TrainEntry(f"q{i}", [10 * i], [10 * i + 1]) for i in range(4000)]
    domains = Counter(s.domain for s in _all_draws(both, seed=0))
    assert abs(domains["goods"] / 4000 - 0.5) < 0.03  # 4.7 standard deviations

    one_query = [TrainEntry("q", [1, 2, 3], [])]
    sampler = DomainBatchSampler(one_query, 1, seed=0)
    picks = Counter(sampler.global_batches(epoch)[0][0].pid for epoch in range(3000))
    assert set(picks) == {1, 2, 3}
    assert all(abs(c / 3000 - 1 / 3) < 0.04 for c in picks.values())


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank 2"):
        DomainBatchSampler(make_entries(3), 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        DomainBatchSampler(make_entries(3), 0)
