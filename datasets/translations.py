"""The Chinese -> English text table of data.translations (docs/TRANSLATIONS.md), for the English-text
backbone families of Table 2 (CLIP, CyCLIP, FashionCLIP, X-CLIP).

Queries and the item text fields the model reads (datasets.text.ITEM_TEXT_FIELDS) are looked up whole
(stripped). As in the authors' English pipeline, an item text field still holding Chinese characters
after the lookup is left out (empty), and a query with no entry is kept as it is; both are counted.
"""
import re

from datasets.counters import SharedCounters
from datasets.text import ITEM_TEXT_FIELDS

CHINESE = re.compile(r"[\u4e00-\u9fff]")


class TranslationError(ValueError):
    pass


def read_translations(path):
    """{chinese: english} of a UTF-8 file of `chinese<TAB>english` lines (blank lines allowed)."""
    table = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except FileNotFoundError:
        raise TranslationError(f"data.translations={path}: file not found") from None
    except UnicodeDecodeError as e:
        raise TranslationError(f"data.translations={path}: not UTF-8 text ({e})") from None
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n").lstrip("\ufeff") if number == 1 else line.rstrip("\r\n")
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


class Translations:
    def __init__(self, path):
        self.path = path
        self.table = read_translations(path)
        self.counts = SharedCounters("untranslated_queries", "untranslated_texts")

    def query(self, text):
        english = self.table.get(text.strip())
        if english is None:
            self.counts.add("untranslated_queries")
            return text
        return english

    def item_fields(self, domain, fields):
        """A parsed item text file with the fields the model reads translated; one left out is counted once."""
        out = dict(fields)
        missed = False
        for key in ITEM_TEXT_FIELDS[domain]:
            value = fields[key]
            if not value:
                continue
            value = self.table.get(value.strip(), value)
            if CHINESE.search(value):
                missed = True
                value = "" if domain == "goods" else None
            out[key] = value
        if missed:
            self.counts.add("untranslated_texts")
        return out
