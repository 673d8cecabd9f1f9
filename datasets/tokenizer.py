"""Tokenization with fixed padding and a visible truncation rate, for every backbone family.

`FixedLengthTokenizer` holds what all families share: [start] tokens [end] then padding to `max_len`,
overlong texts cut to `max_len` tokens with the end token kept (as cn_clip and CLIP's tokenizers do), and
the cuts counted so that training can log how often they happen. Subclasses only encode texts:

- `Tokenizer` (chinese_clip): the `vocab.txt` shipped inside `cn_clip`, read with transformers'
  BertTokenizer (lower-casing, Chinese characters split, accents stripped), which gives the same ids as
  `cn_clip.clip.tokenize`.
- `HFTokenizer` (clip, fashionclip, xclip): the tokenizer saved in the family's save_pretrained folder.
- `OpenClipTokenizer` (cyclip): open_clip's BPE tokenizer with its bundled vocabulary (OpenAI CLIP's).

Every tokenizer is picklable (DataLoader workers).
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


class FixedLengthTokenizer:
    """Base class: `encode(texts)` (token ids without special tokens) is the subclass's."""

    def __init__(self, start_id, end_id, pad_id, vocab_size):
        self.start_id, self.end_id, self.pad_id = start_id, end_id, pad_id
        self.vocab_size = vocab_size
        self.counts = SharedCounters("texts", "truncated")

    def encode(self, texts):
        """list of str -> list of lists of token ids, without start and end tokens."""
        raise NotImplementedError

    def has_tokens(self, text):
        """True when `text` encodes to at least one token: a text of zero-width or control characters only
        ("\u200b\u200d") is non-empty but reads as an empty one. A letter or digit always gives a token."""
        return any(c.isalnum() for c in text) or bool(text and self.encode([text])[0])

    def __call__(self, texts, max_len):
        """texts: list of str -> (input_ids, attention_mask), both LongTensor[len(texts), max_len]:
        [start] tokens [end] then padding; the mask is 1 up to and including [end]."""
        if max_len < 2:
            raise ValueError(f"max_len must leave room for the start and end tokens, got {max_len}")
        encoded = self.encode(list(texts))
        ids = torch.full((len(encoded), max_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), max_len), dtype=torch.long)
        truncated = 0
        for row, tokens in enumerate(encoded):
            if len(tokens) > max_len - 2:
                truncated += 1
                tokens = tokens[:max_len - 2]
            ids[row, :len(tokens) + 2] = torch.tensor([self.start_id, *tokens, self.end_id])
            # from the length, not from ids != pad_id: CLIP's pad token may be its end token
            mask[row, :len(tokens) + 2] = 1
        self.counts.add("texts", len(encoded))
        self.counts.add("truncated", truncated)
        return ids, mask

    @property
    def truncation_rate(self):
        """Share of the texts tokenized so far (in every worker) that were cut to max_len."""
        total = self.counts["texts"]
        return self.counts["truncated"] / total if total else 0.0


class Tokenizer(FixedLengthTokenizer):
    """cn_clip's tokenization: [CLS] tokens [SEP] then [PAD]."""

    def __init__(self, vocab_path=None):
        from transformers import BertTokenizer

        self.vocab_path = vocab_path or cn_clip_vocab_path()
        self._bert = BertTokenizer(vocab=self.vocab_path)
        super().__init__(self._bert.cls_token_id, self._bert.sep_token_id, self._bert.pad_token_id,
                         len(self._bert.get_vocab()))
        self.cls_id = self._bert.cls_token_id
        self.sep_id = self._bert.sep_token_id
        self.mask_id = self._bert.mask_token_id
        # ids that are never a masked-language-modelling target nor a random replacement
        self.special_ids = (self.pad_id, self.cls_id, self.sep_id, self.mask_id, self._bert.unk_token_id)

    def encode(self, texts):
        return self._bert(texts, add_special_tokens=False)["input_ids"]


class HFTokenizer(FixedLengthTokenizer):
    """The tokenizer of a Hugging Face save_pretrained folder (CLIP's: <|startoftext|> tokens <|endoftext|>),
    padded with its pad token (its end token when it has none)."""

    def __init__(self, folder):
        from transformers import AutoTokenizer

        self.folder = folder
        self._hf = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if self._hf.bos_token_id is None or self._hf.eos_token_id is None:
            raise ValueError(f"model.backbone.pretrained={folder}: its tokenizer has no start or end token "
                             "(expected a CLIP tokenizer with <|startoftext|> and <|endoftext|>)")
        pad_id = self._hf.eos_token_id if self._hf.pad_token_id is None else self._hf.pad_token_id
        super().__init__(self._hf.bos_token_id, self._hf.eos_token_id, pad_id, len(self._hf))

    def encode(self, texts):
        return self._hf(texts, add_special_tokens=False)["input_ids"]


class OpenClipTokenizer(FixedLengthTokenizer):
    """open_clip's `SimpleTokenizer` (OpenAI CLIP's BPE, lower-cased), padded with 0 as open_clip does: its
    text towers pool at the largest id of a row, the end token."""

    def __init__(self):
        from open_clip.tokenizer import SimpleTokenizer

        self._bpe = SimpleTokenizer()
        super().__init__(self._bpe.sot_token_id, self._bpe.eot_token_id, 0, self._bpe.vocab_size)

    def encode(self, texts):
        return [self._bpe.encode(text) for text in texts]
