"""The training dataset: one `TrainSample` of the batch sampler -> one tokenized, transformed sample.

A goods sample is a 1-frame clip of its image with the (augmented) title; a video sample is T
frames picked by the segment rule with its video text, parts kept with probability 0.8. All the
randomness of a sample comes from a seed derived from (seed, epoch, query, domain, item), so a
sample is the same whichever worker loads it, and after a resume.

An item whose image (goods) or every frame (video) cannot be read is counted, logged once per
file, and replaced by another item of the same domain: first the query's other items of that
domain, else an item of a query absent from the global batch, drawn from the sample's own seed
(slot s of a batch of S draws among positions s, s + S, ... of a fixed scrambled order of the
candidate queries, so two replacements in one batch never bring the same query). A video frame that cannot be read is left out of that
video's frame list.
"""
import logging
import os
import random

from datasets.annotations import AnnotationError, read_frame_ids
from datasets.counters import SharedCounters
from datasets.frames import UnreadableImage, decode_video, load_image, match_sizes, segment_indices
from datasets.packed import FileStore
from datasets.text import augment_title, goods_title, video_text
from datasets.sampler import item_lists
from datasets.tokenizer import Tokenizer
from datasets.transforms import train_clip_transform
from datasets.translations import read_item_fields

logger = logging.getLogger(__name__)

MAX_REPLACEMENTS = 50  # a sample still unreadable after this many draws points at a broken dataset
SCRAMBLE = 2_147_483_647  # a prime: coprime with any pool size below it


class TrainDataset:
    def __init__(self, paths, entries, *, num_frames, image_size, query_max_len, text_max_len,
                 crop_scale=(0.64, 1.0), frame_source="images", seed=0, title_aug_prob=0.6,
                 video_text_keep_prob=0.8, make_tokenizer=Tokenizer, image_stats=None,
                 translations=None, preprocess="cn_clip", store=None, fast_decode=False):
        """`make_tokenizer()` gives the backbone family's tokenizer, `image_stats` its (mean, std) (None: those
        of the `preprocess` profile, data.preprocess) and `translations` (datasets.translations.Translations)
        its English texts. `store` (datasets.packed, data.format) reads the item files (None: from their
        folders); `fast_decode` decodes JPEGs at reduced scale where the transform allows it (data.fast_decode)."""
        self.paths = paths
        self.entries = entries
        # one tokenizer each, so that the truncation rates of queries and texts are told apart
        self.query_tokenizer = make_tokenizer()
        self.text_tokenizer = make_tokenizer()
        self.translations = translations
        self.num_frames = num_frames
        self.query_max_len = query_max_len
        self.text_max_len = text_max_len
        self.frame_source = frame_source
        self.seed = seed
        self.title_aug_prob = title_aug_prob
        self.video_text_keep_prob = video_text_keep_prob
        self.transform = train_clip_transform(image_size, crop_scale, preprocess, *(image_stats or (None, None)))
        self.store = store or FileStore()
        self.draft = self.transform.decode_size if fast_decode else None
        # queries that can stand in for an unreadable item, per domain
        self._queries_with = {"goods": [], "video": []}
        for i, (goods, videos) in enumerate(item_lists(entries)):
            for domain, pids in (("goods", goods), ("video", videos)):
                if pids:
                    self._queries_with[domain].append(i)
        self.counts = SharedCounters("unreadable_images", "replaced_samples", "unreadable_texts", "empty_texts")
        self._logged = set()  # per process: files already reported

    def raw_counts(self):
        """Event counts so far over all workers, as integers that add up across ranks: the engine sums their
        differences over an epoch across ranks and hands them to `epoch_report`."""
        q, t = self.query_tokenizer.counts, self.text_tokenizer.counts
        translated = self.translations.as_dict() if self.translations else {}
        return {**self.counts.as_dict(), "queries": q["texts"], "queries_truncated": q["truncated"],
                "texts": t["texts"], "texts_truncated": t["truncated"], **translated}

    @staticmethod
    def epoch_report(counts):
        """`counts`: differences of raw_counts() over an epoch, summed over ranks -> (the data/* scalars of the
        training log, its lines); the English-text counts only when the dataset has translations."""
        scalars = {f"data/{k}": counts[k] for k in ("unreadable_images", "replaced_samples", "unreadable_texts",
                                                      "empty_texts")}
        scalars["data/query_truncation_rate"] = counts["queries_truncated"] / max(counts["queries"], 1)
        scalars["data/text_truncation_rate"] = counts["texts_truncated"] / max(counts["texts"], 1)
        lines = [f"data (all ranks): {counts['unreadable_images']} unreadable images, {counts['replaced_samples']} "
                 f"samples replaced, {counts['unreadable_texts']} unreadable and {counts['empty_texts']} empty texts; "
                 f"{100 * scalars['data/query_truncation_rate']:.1f} % of {counts['queries']} queries and "
                 f"{100 * scalars['data/text_truncation_rate']:.1f} % of {counts['texts']} texts cut to their max "
                 "length"]
        if "untranslated_queries" in counts:
            scalars.update({f"data/{k}": counts[k] for k in ("untranslated_queries", "untranslated_texts",
                                                             "unescaped_queries", "unescaped_texts")})
            lines.append(f"English texts (all ranks): {counts['untranslated_queries']} queries kept in Chinese, "
                         f"{counts['untranslated_texts']} item texts left out (no English for them, "
                         f"data.english_rule); HTML entities unescaped in {counts['unescaped_queries']} queries and "
                         f"{counts['unescaped_texts']} item texts")
        return scalars, lines

    def _items(self, query_index, domain):
        entry = self.entries[query_index]
        return entry.goods if domain == "goods" else entry.videos

    def __getitem__(self, sample):
        rng = random.Random(f"train-sample:{self.seed}:{sample.epoch}:{sample.query_index}:{sample.domain}:{sample.pid}")
        query_index, pid = sample.query_index, sample.pid
        tried = set()
        for _ in range(MAX_REPLACEMENTS):
            try:
                frames = self._load_frames(sample.domain, pid, rng)
                break
            except UnreadableImage as e:
                self.counts.add("unreadable_images")
                self._log_once(e.path, f"unreadable ({e.reason}); drawing another {sample.domain} sample")
                tried.add(pid)
                self.counts.add("replaced_samples")
                query_index, pid = self._replacement(sample, query_index, tried, rng)
        else:
            raise RuntimeError(f"{MAX_REPLACEMENTS} {sample.domain} items in a row were unreadable, starting with "
                               f"pid {sample.pid}: check {self.paths.images_dir(sample.domain)}")
        text = self._text(sample.domain, pid, rng)
        entry = self.entries[query_index]
        # an English-text family reads the list's English query where it has one; chinese_clip has no translations
        query = self.translations.query(entry.query, entry.english) if self.translations else entry.query
        query_ids, query_mask = self.query_tokenizer([query], self.query_max_len)
        text_ids, text_mask = self.text_tokenizer([text], self.text_max_len)
        return {
            "query_ids": query_ids[0], "query_mask": query_mask[0],
            "frames": self.transform(frames, seed=rng.getrandbits(63)),
            "text_ids": text_ids[0], "text_mask": text_mask[0],
            "domain": sample.domain, "pid": pid, "query_index": query_index, "epoch": sample.epoch,
        }

    def _untried(self, query_index, domain, tried):
        return [p for p in self._items(query_index, domain) if p not in tried]

    def _replacement(self, sample, query_index, tried, rng):
        domain = sample.domain
        others = self._untried(query_index, domain, tried)
        if others:
            return query_index, rng.choice(others)
        pool = self._queries_with[domain]
        share = range(sample.slot, len(pool), sample.slots)
        for attempt in range(2 * MAX_REPLACEMENTS):
            if attempt == MAX_REPLACEMENTS or not share:  # this slot's share is (nearly) all unusable
                share = range(len(pool))
            # positions spread over the file by a bijection of range(len(pool)), so that a slot's share is
            # not a residue class of the file order
            query_index = pool[SCRAMBLE * rng.choice(share) % len(pool)]
            untried = self._untried(query_index, domain, tried)
            if query_index not in sample.batch_queries and untried:
                return query_index, rng.choice(untried)
        raise RuntimeError(f"no {domain} query outside the global batch of sample {sample.pid} to replace it: "
                           f"the training file has {len(pool)} queries with {domain} items")

    def _log_once(self, path, message):
        if path not in self._logged:
            self._logged.add(path)
            logger.warning("%s: %s", path, message)

    def _load_frames(self, domain, pid, rng):
        """T uint8 frames [3, H, W] of one size (a tensor [T, 3, H, W] or a list; T = 1 for goods)."""
        read = self.store.reader(domain, pid)
        if domain == "goods":
            return load_image(self.paths.image_path(pid), read, self.draft)[None]
        if self.frame_source == "raw":
            return decode_video(self.paths.raw_video_path(pid), self.num_frames, rng)
        frameid_path = self.paths.frameid_path(pid)
        try:
            names = read_frame_ids(frameid_path, read)
        except (OSError, AnnotationError) as e:
            raise UnreadableImage(frameid_path, str(e)) from None
        frame_paths = [os.path.join(self.paths.images_dir("video"), name) for name in names]
        loaded = {}
        while frame_paths:
            indices = segment_indices(len(frame_paths), self.num_frames, rng)
            try:
                for i in indices:
                    if frame_paths[i] not in loaded:
                        loaded[frame_paths[i]] = load_image(frame_paths[i], read, self.draft)
            except UnreadableImage as e:
                # sample again over the readable frames (repeat-last padding if fewer than T remain)
                self.counts.add("unreadable_images")
                self._log_once(e.path, f"unreadable ({e.reason}); frame left out of video {pid}")
                frame_paths.remove(e.path)
                continue
            return match_sizes([loaded[frame_paths[i]] for i in indices])
        raise UnreadableImage(frameid_path, "none of the listed frames is readable")

    def _text(self, domain, pid, rng):
        """The item's text with its training-time augmentation; a file with no usable text
        (missing, or with the wrong number of lines) gives '' and is counted, as is a text that
        tokenises to nothing."""
        path = self.paths.text_path(domain, pid)
        try:
            fields = read_item_fields(path, domain, self.translations, self.store.reader(domain, pid))
        except (OSError, AnnotationError) as e:
            self.counts.add("unreadable_texts")
            self._log_once(self.translations.text_path(path) if self.translations else path,
                           f"unreadable text ({e}); using an empty text")
            return ""
        if domain == "goods":
            title = goods_title(fields)
            if not self.text_tokenizer.has_tokens(title):
                self.counts.add("empty_texts")
            text = augment_title(title, rng, self.title_aug_prob)
        else:
            if not self.text_tokenizer.has_tokens(video_text(fields)):
                self.counts.add("empty_texts")
            text = video_text(fields, rng, self.video_text_keep_prob)
        return self.translations.item_text(text) if self.translations else text
