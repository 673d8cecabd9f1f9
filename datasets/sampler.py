"""The domain-pure distributed batch sampler of docs/DATA_FORMAT.md.

Every rank computes the same epoch plan from (seed, epoch) alone: each query draws one sample
(its domain 50/50 when it has both, then an item uniformly), the samples of each domain are
shuffled and cut into global batches of batch_size x world_size, a remainder too short for a
whole global batch is dropped, and the global batches are put in a shuffled order. Rank r
takes the r-th slice of batch_size samples of every global batch. A query therefore appears at
most once per global batch, the ranks' batches are disjoint, and a global batch with W ranks is
the batch a single process would get with batch_size x W.
"""
import random
from collections import namedtuple

DOMAINS = ("goods", "video")

# What the dataset receives for one sample; `epoch` makes its augmentation seed epoch-specific.
# `batch_queries` (the query indices of its global batch), `slot` (its position there) and `slots`
# (the global batch size) let an unreadable item be replaced without repeating a query in the batch.
TrainSample = namedtuple("TrainSample", "epoch query_index domain pid batch_queries slot slots",
                         defaults=(frozenset(), 0, 1))


def item_lists(entries):
    """(goods pids, video pids) of each entry: a datasets.train_index.TrainIndex gives them without building
    its entries, a list of TrainEntry from its attributes."""
    if hasattr(entries, "item_lists"):
        return entries.item_lists()
    return ((e.goods, e.videos) for e in entries)


def cut_global_batches(by_domain, global_size, rng):
    """{domain: samples} -> the global batches of the epoch in a shuffled order: each domain's
    samples shuffled and cut into batches of `global_size`, a short remainder dropped."""
    batches = []
    for domain in DOMAINS:
        samples = by_domain[domain]
        rng.shuffle(samples)
        batches += [samples[i:i + global_size] for i in range(0, len(samples) - global_size + 1, global_size)]
    rng.shuffle(batches)
    return batches


class DomainBatchSampler:
    """Yields lists of `TrainSample`, `batch_size` per batch, for this rank.

    `set_epoch(epoch, start_batch=0)` selects the epoch's plan; `start_batch` skips the first
    batches (resuming in the middle of an epoch without reading them). `len()` is the number of
    batches the next iteration yields.
    """

    def __init__(self, entries, batch_size, rank=0, world_size=1, seed=0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.entries = entries
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start_batch = 0
        self._set_plan(0)

    def set_epoch(self, epoch, start_batch=0):
        if epoch != self.epoch:
            self._set_plan(epoch)
        if not 0 <= start_batch <= len(self._plan):
            raise ValueError(f"start_batch {start_batch} outside the {len(self._plan)} batches of epoch {epoch}")
        self.start_batch = start_batch

    def _set_plan(self, epoch):
        self.epoch = epoch
        self._plan = self.global_batches(epoch)

    def global_batches(self, epoch):
        """The epoch's global batches, in order: lists of batch_size x world_size TrainSample."""
        # a string seed is hashed by `random` itself: the same on every rank and every run
        rng = random.Random(f"domain-batches:{self.seed}:{epoch}")
        by_domain = {d: [] for d in DOMAINS}
        for index, (goods, videos) in enumerate(item_lists(self.entries)):
            if goods and videos:
                domain = DOMAINS[rng.random() < 0.5]
            else:
                domain = "goods" if goods else "video"
            pids = goods if domain == "goods" else videos
            by_domain[domain].append(TrainSample(epoch, index, domain, rng.choice(pids)))
        return cut_global_batches(by_domain, self.batch_size * self.world_size, rng)

    def __iter__(self):
        lo = self.rank * self.batch_size
        for batch in self._plan[self.start_batch:]:
            taken = frozenset(s.query_index for s in batch)
            yield [s._replace(batch_queries=taken, slot=lo + j, slots=len(batch))
                   for j, s in enumerate(batch[lo:lo + self.batch_size])]

    def __len__(self):
        return len(self._plan) - self.start_batch


class ItemBatchSampler(DomainBatchSampler):
    """Pre-training: every goods and video item of the training file once per epoch, in domain-pure
    global batches cut and ordered as above. An item listed under several queries comes once, as
    a sample of the first query that lists it (the query whose items stand in for it when it
    cannot be read)."""

    def __init__(self, entries, batch_size, rank=0, world_size=1, seed=0):
        self.items = {d: [] for d in DOMAINS}
        seen = {d: set() for d in DOMAINS}
        for index, (goods, videos) in enumerate(item_lists(entries)):
            for domain, pids in (("goods", goods), ("video", videos)):
                for pid in pids:
                    if pid not in seen[domain]:
                        seen[domain].add(pid)
                        self.items[domain].append((index, pid))
        super().__init__(entries, batch_size, rank, world_size, seed)

    def global_batches(self, epoch):
        rng = random.Random(f"item-batches:{self.seed}:{epoch}")
        by_domain = {d: [TrainSample(epoch, index, d, pid) for index, pid in self.items[d]] for d in DOMAINS}
        return cut_global_batches(by_domain, self.batch_size * self.world_size, rng)


class PairBatchSampler(DomainBatchSampler):
    """train.mode=ft (the Siamese baseline): one (goods, micro-video) pair per query that has both, drawn
    uniformly per epoch, cut into global batches of pairs as above. A rank's batch lists its goods samples,
    then the videos of the same queries in the same order (datasets.loader.collate_pairs). Queries with
    items of one domain only have no pair: `skipped_queries` counts them."""

    def __init__(self, entries, batch_size, rank=0, world_size=1, seed=0):
        queries = paired = 0
        for goods, videos in item_lists(entries):
            queries += 1
            paired += bool(goods and videos)
        self.skipped_queries = queries - paired
        if paired < batch_size * world_size:
            raise ValueError(f"train.mode=ft: {paired} queries have both goods and micro-videos, fewer than "
                             f"one global batch of {batch_size} x {world_size} pairs")
        super().__init__(entries, batch_size, rank, world_size, seed)

    def global_batches(self, epoch):
        rng = random.Random(f"pair-batches:{self.seed}:{epoch}")
        pairs = [(TrainSample(epoch, index, "goods", rng.choice(goods)),
                  TrainSample(epoch, index, "video", rng.choice(videos)))
                 for index, (goods, videos) in enumerate(item_lists(self.entries)) if goods and videos]
        rng.shuffle(pairs)
        size = self.batch_size * self.world_size
        return [pairs[i:i + size] for i in range(0, len(pairs) - size + 1, size)]

    def __iter__(self):
        lo = self.rank * self.batch_size
        for batch in self._plan[self.start_batch:]:
            taken = frozenset(g.query_index for g, _ in batch)
            mine = batch[lo:lo + self.batch_size]
            yield [s._replace(batch_queries=taken, slot=lo + j, slots=len(batch))
                   for half in (0, 1) for j, s in enumerate(pair[half] for pair in mine)]
