"""English texts for the English-text backbone families of Table 2 (CLIP, CyCLIP, FashionCLIP, X-CLIP):
docs/TRANSLATIONS.md.

Queries: the training list's English 4th field, or a line-aligned English file (data.translations; both
become the training index's English queries), or a Chinese -> English table (data.translations) looked up
with the whole (stripped) query; a query with none of them is kept as it is and counted.
Item texts: the `<pid><data.english_suffix>.txt` files beside the Chinese ones, and/or the table looked
up with each text field the model reads (datasets.text.ITEM_TEXT_FIELDS); what still holds Chinese is
handled by data.english_rule and counted. HTML entities of every English text are unescaped and counted.
"""
import html
import os
import re

from datasets.annotations import AnnotationError, read_file_lines, read_goods_text, read_video_text
from datasets.counters import SharedCounters
from datasets.families import ENGLISH_FAMILIES
from datasets.text import ITEM_TEXT_FIELDS

CHINESE = re.compile(r"[\u4e00-\u9fff]")
# data.english_rule: per_field drops each field still holding Chinese, authors cuts then blanks the whole text
ENGLISH_RULES = ("per_field", "authors")
AUTHORS_MAX_CHARS = 70  # the authors' English rule cuts an item text here, then blanks it if Chinese remains


class TranslationError(ValueError):
    pass


def _lines(path):
    try:
        return read_file_lines(path)
    except FileNotFoundError:
        raise TranslationError(f"data.translations={path}: file not found") from None
    except AnnotationError as e:  # not UTF-8
        raise TranslationError(f"data.translations={path}: {e.expected}") from None


def is_line_aligned(path):
    """True for a data.translations file without any tab: English queries, one per training line."""
    return not any("\t" in line for line in _lines(path))


def read_aligned_english(path):
    """The English queries of a line-aligned file, one per line (a blank line: None, no English)."""
    return [line.strip() or None for line in _lines(path)]


def read_translations(path):
    """{chinese: english} of a UTF-8 file of `chinese<TAB>english` lines (blank lines allowed)."""
    table = {}
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise TranslationError(f"{path}:{number}: expected 'chinese text<TAB>english text' (two non-empty "
                                   f"fields), got {line[:80]!r}")
        source, english = parts[0].strip(), parts[1].strip()
        if table.get(source, english) != english:
            raise TranslationError(f"{path}:{number}: {source!r} is translated twice, as {table[source]!r} "
                                   f"and {english!r}")
        table[source] = english
    return table


def english_queries_file(data):
    """data.translations when it is a line-aligned English query file (the training index reads it), else None."""
    path = data["translations"]
    return path if path and is_line_aligned(path) else None


class Translations:
    """`path`: data.translations (a table, or a line-aligned query file that the training index reads);
    `suffix`: data.english_suffix (item texts from `<pid><suffix>.txt`); `rule`: data.english_rule.
    With neither a table nor a suffix, item texts are left as they are."""

    def __init__(self, path=None, suffix=None, rule="per_field"):
        self.table = read_translations(path) if path and not is_line_aligned(path) else None
        self.suffix = suffix
        self.authors_rule = rule == "authors"
        self.counts = SharedCounters("untranslated_queries", "untranslated_texts")
        self.entities = SharedCounters("unescaped_queries", "unescaped_texts")

    @classmethod
    def for_family(cls, family, data):
        """The English texts of an English-text family from a config's data section; None for chinese_clip."""
        if family not in ENGLISH_FAMILIES:
            return None
        return cls(data["translations"], data["english_suffix"], data["english_rule"])

    def as_dict(self):
        """All counts: texts left in or out of Chinese, texts whose HTML entities were unescaped."""
        return {**self.counts.as_dict(), **self.entities.as_dict()}

    def query(self, text, english=None):
        """The English of a training query: `english` (the list's, when given), else the table's entry."""
        if not english and self.table is not None:
            english = self.table.get(text.strip())
        if not english:
            self.counts.add("untranslated_queries")
            return text
        plain = html.unescape(english)
        if plain != english:
            self.entities.add("unescaped_queries")
        return plain

    def text_path(self, path):
        """The item text file to read instead of the Chinese one at `path`."""
        if not self.suffix:
            return path
        root, ext = os.path.splitext(path)
        return root + self.suffix + ext

    @property
    def translates_items(self):
        """Whether item texts are read in English (a table or data.english_suffix), not left as they are."""
        return self.table is not None or bool(self.suffix)

    def item_fields(self, domain, fields):
        """A parsed item text file with the fields the model reads looked up in the table and unescaped; with
        the per_field rule a field still holding Chinese is left out (the item counted once)."""
        if not self.translates_items:
            return fields
        out = dict(fields)
        missed = unescaped = False
        for key in ITEM_TEXT_FIELDS[domain]:
            value = fields[key]
            if not value:
                continue
            if self.table is not None:
                value = self.table.get(value.strip(), value)
            plain = html.unescape(value)
            unescaped |= plain != value
            if not self.authors_rule and CHINESE.search(plain):
                missed = True
                plain = "" if domain == "goods" else None
            out[key] = plain
        if missed:
            self.counts.add("untranslated_texts")
        if unescaped:
            self.entities.add("unescaped_texts")
        return out

    def item_text(self, text):
        """An item's final text under the authors' rule: its first 70 characters, blank (and counted) if they
        hold Chinese; the per_field rule has already acted on the fields."""
        if not (self.authors_rule and self.translates_items):
            return text
        text = text[:AUTHORS_MAX_CHARS]
        if CHINESE.search(text):
            self.counts.add("untranslated_texts")
            return ""
        return text


def read_item_fields(path, domain, translations=None, read=None):
    """The parsed text file of an item (`path`: its Chinese one) as the model reads it: with `translations`,
    the English file beside it or the table's fields; `read` (path -> bytes): a packed dataset's reader.
    OSError or AnnotationError when it cannot be read."""
    if translations:
        path = translations.text_path(path)
    fields = read_goods_text(path, read) if domain == "goods" else read_video_text(path, read)
    return translations.item_fields(domain, fields) if translations else fields
