"""Chinese-CLIP tokenization with fixed padding and a visible truncation rate.

The vocabulary is the `vocab.txt` shipped inside `cn_clip`, read with transformers'
BertTokenizer (lower-casing, Chinese characters split, accents stripped), which gives the same
ids as `cn_clip.clip.tokenize`. Overlong texts are cut to `max_len` tokens, [SEP] included, as
cn_clip does; unlike cn_clip, the cuts are counted so that training can log how often it happens.
"""
import importlib.util
import os

import torch

from datasets.counters import SharedCounters


def cn_clip_vocab_path():
    spec = importlib.util.find_spec("cn_clip")
    if spec is None:
        raise ImportError("the cn_clip package is required for its vocabulary: pip install cn_clip")
    path = os.path.join(spec.submodule_search_locations[0], "clip", "vocab.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cn_clip vocabulary not found at {path}: reinstall cn_clip")
    return path


class Tokenizer:
    def __init__(self, vocab_path=None):
        from transformers import BertTokenizer

        self.vocab_path = vocab_path or cn_clip_vocab_path()
        self._bert = BertTokenizer(vocab=self.vocab_path)
        self.vocab_size = len(self._bert.get_vocab())
        self.pad_id = self._bert.pad_token_id
        self.cls_id = self._bert.cls_token_id
        self.sep_id = self._bert.sep_token_id
        self.mask_id = self._bert.mask_token_id
        # ids that are never a masked-language-modelling target nor a random replacement
        self.special_ids = (self.pad_id, self.cls_id, self.sep_id, self.mask_id, self._bert.unk_token_id)
        self.counts = SharedCounters("texts", "truncated")

    def __call__(self, texts, max_len):
        """texts: list of str -> (input_ids, attention_mask), both LongTensor[len(texts), max_len]:
        [CLS] tokens [SEP] then [PAD]."""
        if max_len < 2:
            raise ValueError(f"max_len must leave room for [CLS] and [SEP], got {max_len}")
        encoded = self._bert(list(texts), add_special_tokens=False)["input_ids"]
        ids = torch.full((len(encoded), max_len), self.pad_id, dtype=torch.long)
        truncated = 0
        for row, tokens in enumerate(encoded):
            if len(tokens) > max_len - 2:
                truncated += 1
                tokens = tokens[:max_len - 2]
            ids[row, :len(tokens) + 2] = torch.tensor([self.cls_id, *tokens, self.sep_id])
        self.counts.add("texts", len(encoded))
        self.counts.add("truncated", truncated)
        return ids, (ids != self.pad_id).long()

    @property
    def truncation_rate(self):
        """Share of the texts tokenized so far (in every worker) that were cut to max_len."""
        total = self.counts["texts"]
        return self.counts["truncated"] / total if total else 0.0
