"""The evaluation dataset: every item of a test list (query or gallery), in file order.

Items are never dropped or duplicated. Frames follow the evaluation rule (data.test_frames:
segment centres, or the authors' rule), texts are used without augmentation (data.test_text: from
the parsed fields, or the authors' composition of the raw lines). An unreadable image or text is an error naming the file,
unless `skip_unreadable` is set: then the unreadable frames are black, a missing text is empty,
and each case is counted (`stats()`) and logged.
"""
import logging
import os

import torch

from datasets.annotations import AnnotationError, parse_item_list, read_raw_lines
from datasets.counters import SharedCounters
from datasets.frames import UnreadableImage, authors_centre_indices, decode_video, load_image, segment_indices
from datasets.packed import FileStore
from datasets.text import VIDEO_BODY_MAX_CHARS, VIDEO_TEXT_MAX_CHARS, goods_title, video_text
from datasets.tokenizer import Tokenizer
from datasets.transforms import EvalClipTransform
from datasets.translations import read_item_fields

logger = logging.getLogger(__name__)
# data.test_frames -> the frames of a clip taken at test time
FRAME_RULES = {"centres": segment_indices, "authors": authors_centre_indices}
TEST_FRAMES = tuple(FRAME_RULES)
# data.test_text: the text composed from the parsed fields, or the authors' composition of the raw lines
TEST_TEXTS = ("fields", "authors_lines")


class EvalDataset:
    def __init__(self, paths, list_path, *, num_frames, image_size, text_max_len,
                 frame_source="images", skip_unreadable=False, domain=None, make_tokenizer=Tokenizer,
                 image_stats=None, translations=None, test_frames="centres", test_text="fields",
                 preprocess="cn_clip", store=None, fast_decode=False):
        """`store` (datasets.packed, data.format) reads the item files (None: from their folders); `fast_decode`
        decodes JPEGs at reduced scale (data.fast_decode), close to the full decode's pixels, not equal."""
        if test_text == "authors_lines" and translations is not None and translations.translates_items:
            raise ValueError("data.test_text=authors_lines composes the Chinese lines as read; it cannot be "
                             "combined with data.translations")
        self.frame_rule = FRAME_RULES[test_frames]
        self.test_text = test_text
        self.paths = paths
        self.list_path = list_path
        self.items = parse_item_list(list_path, domain)
        self.tokenizer = make_tokenizer()
        self.translations = translations
        self.num_frames = num_frames
        self.image_size = image_size
        self.text_max_len = text_max_len
        self.frame_source = frame_source
        self.skip_unreadable = skip_unreadable
        # data.preprocess; image_stats (mean, std), None: the profile's
        self.transform = EvalClipTransform(image_size, preprocess, *(image_stats or (None, None)))
        self.store = store or FileStore()
        self.draft = self.transform.decode_size if fast_decode else None
        self.counts = SharedCounters("black_frames", "empty_texts")

    def __len__(self):
        return len(self.items)

    def stats(self):
        translated = self.translations.as_dict() if self.translations else {}
        return {**self.counts.as_dict(), "truncation_rate": self.tokenizer.truncation_rate, **translated}

    def __getitem__(self, index):
        item = self.items[index]
        text_ids, text_mask = self.tokenizer([self._text(item)], self.text_max_len)
        return {"frames": self.transform(self._frames(item)), "text_ids": text_ids[0], "text_mask": text_mask[0],
                "pid": item.pid, "index": index}

    def _unreadable(self, item, error, what):
        if not self.skip_unreadable:
            raise UnreadableImage(error.path, f"{error.reason}; item {item.pid} of {self.list_path}. "
                                              "Set data.skip_unreadable_eval=true to use a black frame instead") from None
        logger.warning("%s: unreadable (%s); item %s of %s gets %s", error.path, error.reason, item.pid,
                       self.list_path, what)

    def _black(self):
        return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8)

    def _frames(self, item):
        """T uint8 frames [3, H, W] (T = num_frames for a video, 1 for goods), each transformed at its own size."""
        if item.domain == "video" and self.frame_source == "raw":
            try:
                return decode_video(self.paths.raw_video_path(item.pid), self.num_frames)
            except UnreadableImage as e:
                self._unreadable(item, e, "black frames")
                self.counts.add("black_frames", self.num_frames)
                return torch.stack([self._black()] * self.num_frames)
        indices = self.frame_rule(len(item.frames), self.num_frames if item.domain == "video" else 1)
        loaded, read = {}, self.store.reader(item.domain, item.pid)
        for i in dict.fromkeys(indices):  # a repeated (padding) frame is read once
            try:
                loaded[i] = load_image(os.path.join(self.paths.images_dir(item.domain), item.frames[i]), read,
                                       self.draft)
            except UnreadableImage as e:
                self._unreadable(item, e, "a black frame")
                self.counts.add("black_frames")
                loaded[i] = self._black()
        return [loaded[i] for i in indices]

    def _text(self, item):
        """The item's text; an empty one (unreadable with skip on, a file with the wrong number of lines, or a
        text that tokenises to nothing) is counted."""
        path = os.path.join(self.paths.text_dir(item.domain), item.text_path)
        try:
            text = composed_text(path, item.domain, self.test_text, self.translations,
                                 self.store.reader(item.domain, item.pid))
        except (OSError, AnnotationError) as e:
            if not self.skip_unreadable:
                raise
            logger.warning("%s: unreadable text (%s); item %s of %s gets an empty text", path, e, item.pid,
                           self.list_path)
            text = ""
        text = self.translations.item_text(text) if self.translations else text
        if not self.tokenizer.has_tokens(text):
            self.counts.add("empty_texts")
        return text


def item_text(path, domain, test_text="fields", translations=None):
    """The text the model reads for the item whose text file is `path` (its Chinese one: with
    `translations`, the English file beside it or the table's fields), by the rule of data.test_text."""
    text = composed_text(path, domain, test_text, translations)
    return translations.item_text(text) if translations else text


def composed_text(path, domain, test_text, translations, read=None):
    """item_text before the authors' English rule cuts it (the text an empty count is taken on); `read`: a packed
    dataset's reader (datasets.packed)."""
    if domain == "video" and test_text == "authors_lines":  # never with item translations (EvalDataset)
        return authors_video_text(read_raw_lines(path, read))
    fields = read_item_fields(path, domain, translations, read)
    return goods_title(fields) if domain == "goods" else video_text(fields)


def authors_video_text(lines):
    """The authors' test-time video text from raw lines (caption, title, text): title, text[:40] unless it
    equals the title, caption, each unless it is exactly `null`, joined by '|' and cut to 80 characters.
    A line still carries its newline, so only a last line without one can equal `null` or the title."""
    caption, title, body = (lines + [None] * 3)[:3]
    if body is not None and body != title:
        body = body[:VIDEO_BODY_MAX_CHARS]
    else:
        body = None
    parts = [p for p in (title, body, caption) if p is not None and p != "null"]
    return "|".join(parts)[:VIDEO_TEXT_MAX_CHARS]
