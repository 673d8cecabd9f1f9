"""The training list as flat, memory-mapped arrays that every rank and DataLoader worker shares.

Parsed into Python objects, Real20M's training list (about a million queries) costs every rank a
minute and a gigabyte, and the objects' reference counts make forked workers copy their pages.
`load_train_index(path, cache_dir)` parses the file once (with the parser of datasets.annotations,
so errors still name file and line), merges the lines of one query text into its first line
(datasets.annotations.merge_duplicate_queries: two lines of one query must not be each other's
negatives), and stores eight arrays: the query texts and their English versions (the optional 4th
field, or a line-aligned English file) as UTF-8 buffers with offsets, and the goods and video pids
with per-query offsets. They are saved as .npy files in a folder of `cache_dir` named after the
path and the SHA-256 of the content of the file (and of the English file), written under a temporary
name and renamed into place, so a partial cache is never used and an edited file gets a new one, even
an edit that keeps its size and modification time (hashing costs about 0.1 s per 150 MB, on every open).
A cache folder that fails its checks when opened (missing or short arrays, a bad meta.json) is rebuilt
with a warning; one that cannot be written falls back to `fallback_dir`. Opened with mmap, the pages
are the page cache's, shared by every process of the node.
"""
import errno
import hashlib
import json
import logging
import os
import shutil
import time

import numpy as np

from datasets.annotations import AnnotationError, TrainEntry, iter_lines, merge_duplicate_queries, parse_train_line
from datasets.translations import read_aligned_english
from utils.files import file_sha256

log = logging.getLogger(__name__)

ARRAYS = ("query_bytes", "query_offsets", "english_bytes", "english_offsets", "goods", "goods_offsets", "videos",
          "videos_offsets")
FORMAT = 2  # bump when the arrays change meaning
CACHE_DIR_NAME = ".train_index"  # the default cache folder, beside the training file


def _file_key(path):
    return {"path": os.path.abspath(path), "sha256": file_sha256(path)}


def index_key(path, english_file=None):
    """What the index of the training file `path` is made from: the files' paths and contents, the format."""
    return {**_file_key(path), "english": _file_key(english_file) if english_file else None, "format": FORMAT}


def index_folder(path, cache_dir, key):
    """The cache folder of the index with `key` (index_key) of `path`, under `cache_dir`."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{os.path.basename(path)}.{digest}")


def _merge_repeats(queries, english, pids, offsets, repeats):
    """Fold the later lines of a query text (`repeats`: {query index: [TrainEntry]}) into their first line, as
    merge_duplicate_queries does: the per-query lists are patched in place of the first lines' ones."""
    merged = {}
    for i, later in repeats.items():
        first = TrainEntry(queries[i], *(pids[n][offsets[n][i]:offsets[n][i + 1]] for n in ("goods", "videos")),
                           english[i] or None)
        merged[i] = merge_duplicate_queries([first] + later)[0]
        english[i] = merged[i].english or ""
    for name in ("goods", "videos"):
        flat, off = pids[name], offsets[name]
        counts = np.diff(np.asarray(off, dtype=np.int64))
        out, done = [], 0
        for i in sorted(merged):
            out += flat[off[done]:off[i]]
            out += getattr(merged[i], name)
            counts[i] = len(getattr(merged[i], name))
            done = i + 1
        pids[name] = out + flat[off[done]:]
        offsets[name] = np.concatenate([[0], np.cumsum(counts)])


def _build(path, english_file, out):
    """Parse `path` line by line into the arrays of ARRAYS, saved in the folder `out`; -> (lines, duplicate lines)."""
    aligned = read_aligned_english(english_file) if english_file else None
    first, queries, english, repeats = {}, [], [], {}
    pids = {"goods": [], "videos": []}
    offsets = {"goods": [0], "videos": [0]}
    lines = 0
    for lineno, line in iter_lines(path):
        entry = parse_train_line(line, path, lineno)
        if aligned is not None:
            if entry.english:
                raise AnnotationError(path, lineno, f"expected no English 4th field: data.translations={english_file} "
                                                    "gives the English queries by line; use one of the two")
            entry.english = aligned[lines] if lines < len(aligned) else None
        lines += 1
        i = first.setdefault(entry.query, len(queries))
        if i < len(queries):  # the text of an earlier line
            repeats.setdefault(i, []).append(entry)
            continue
        queries.append(entry.query)
        english.append(entry.english or "")
        for name in ("goods", "videos"):
            pids[name] += getattr(entry, name)
            offsets[name].append(len(pids[name]))
    if aligned is not None and len(aligned) != lines:
        raise AnnotationError(english_file, None, f"data.translations has {len(aligned)} lines and "
                              f"data.train_file={path} has {lines} query lines: a line-aligned English file needs "
                              "one line per training line (blank training lines not counted)")
    if repeats:
        _merge_repeats(queries, english, pids, offsets, repeats)
    arrays = {}
    for name, texts in (("query", queries), ("english", english)):
        encoded = [t.encode("utf-8") for t in texts]
        arrays[name + "_bytes"] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        arrays[name + "_offsets"] = np.cumsum([0] + [len(b) for b in encoded], dtype=np.int64)
    for name in ("goods", "videos"):
        arrays[name] = np.asarray(pids[name], dtype=np.int64)
        arrays[name + "_offsets"] = np.asarray(offsets[name], dtype=np.int64)
    os.makedirs(out)
    for name in ARRAYS:
        np.save(os.path.join(out, name + ".npy"), arrays[name])
    return lines, lines - len(queries)


class TrainIndex:
    """The queries of the training list, one per query text, in the order of their first lines: `len()`,
    `query(i)`, `english(i)`, `goods(i)`, `videos(i)`, and `index[i]` as a datasets.annotations.TrainEntry
    (what the sampler and the training dataset read); `lines` and `duplicate_lines` count the file's lines."""

    def __init__(self, folder):
        self.folder = folder
        self._open()

    def _open(self):
        # plain ndarray views of the mapped files: slicing them is several times faster than slicing np.memmap
        a = {name: np.asarray(np.load(os.path.join(self.folder, name + ".npy"), mmap_mode="r")) for name in ARRAYS}
        self._text, self._text_offsets = a["query_bytes"], a["query_offsets"]
        self._english, self._english_offsets = a["english_bytes"], a["english_offsets"]
        with open(os.path.join(self.folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        self.lines, self.duplicate_lines = meta["lines"], meta["duplicate_lines"]
        self._pids = {"goods": (a["goods"], a["goods_offsets"]), "videos": (a["videos"], a["videos_offsets"])}

    def __getstate__(self):  # a spawned worker maps the files itself rather than receiving copies
        return {"folder": self.folder}

    def __setstate__(self, state):
        self.folder = state["folder"]
        self._open()

    def __len__(self):
        return len(self._text_offsets) - 1

    def query(self, i):
        return bytes(self._text[self._text_offsets[i]:self._text_offsets[i + 1]]).decode("utf-8")

    def english(self, i):
        """The English query of query i (None: not given)."""
        return bytes(self._english[self._english_offsets[i]:self._english_offsets[i + 1]]).decode("utf-8") or None

    def _items(self, name, i):
        pids, offsets = self._pids[name]
        return pids[offsets[i]:offsets[i + 1]].tolist()

    def goods(self, i):
        return self._items("goods", i)

    def videos(self, i):
        return self._items("videos", i)

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"query {i} outside the {len(self)} queries of {self.folder}")
        i %= len(self)
        return TrainEntry(self.query(i), self.goods(i), self.videos(i), self.english(i))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def item_lists(self):
        """(goods, videos) of every query in order, without decoding the query texts (the sampler's epoch plan)."""
        (goods, go), (videos, vo) = self._pids["goods"], self._pids["videos"]
        for i in range(len(self)):
            yield goods[go[i]:go[i + 1]].tolist(), videos[vo[i]:vo[i + 1]].tolist()


class CorruptIndex(Exception):
    """A cache folder whose files are not a complete index of the key it is named after."""


def _open_checked(folder, key):
    """The TrainIndex in `folder`, checked against `key` and for arrays of consistent lengths; None when the
    folder does not exist; CorruptIndex when it is not a complete index."""
    if not os.path.isdir(folder):
        return None
    try:
        index = TrainIndex(folder)
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError, EOFError, KeyError, TypeError) as e:  # numpy: ValueError for a short array
        raise CorruptIndex(f"{type(e).__name__}: {e}") from None
    if {k: meta.get(k) for k in key} != key:
        raise CorruptIndex("its meta.json names another file or content")
    n = len(index._text_offsets)
    ends = [(index._text_offsets, index._text), (index._english_offsets, index._english),
            *((off, flat) for flat, off in index._pids.values())]
    if n < 1 or any(len(off) != n or off[0] != 0 or off[-1] != len(flat) for off, flat in ends):
        raise CorruptIndex("its arrays disagree in length")
    return index


def _unwritable(error):
    return isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


def _build_into(path, english_file, key, folder, stale):
    """Build the index of `path` into `folder`, replacing the folder if `stale` (it failed _open_checked)."""
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    tmp = f"{folder}.partial{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    try:
        lines, duplicates = _build(path, english_file, tmp)
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump({**key, "lines": lines, "duplicate_lines": duplicates}, f)
    except BaseException:  # a bad line, a full disk, Ctrl-C: leave no partial folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("indexed %s in %.1f s into %s (later runs map it)", path, time.perf_counter() - start, folder)
    if stale:
        old = f"{folder}.corrupt{os.getpid()}"
        try:
            os.rename(folder, old)
        except FileNotFoundError:  # another process replaced it first
            pass
        else:
            shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, folder)
    except OSError:  # another process renamed its copy first
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(os.path.join(folder, "meta.json")):
            raise


def load_train_index(path, cache_dir=None, english_file=None, fallback_dir=None):
    """The TrainIndex of the training list `path`, from its cache in `cache_dir` (default: the
    CACHE_DIR_NAME folder beside the file) or built there first; when `cache_dir` cannot be written,
    from `fallback_dir` (e.g. <output_dir>/train_index). `english_file`: a line-aligned file of
    English queries (docs/TRANSLATIONS.md) for the lines of `path`. Safe to call from several
    processes at once: each builds under its own temporary name and the first rename wins."""
    key = index_key(path, english_file)
    cache_dir = cache_dir or os.path.join(os.path.dirname(os.path.abspath(path)), CACHE_DIR_NAME)
    dirs = [cache_dir] + ([fallback_dir] if fallback_dir and fallback_dir != cache_dir else [])
    index, corrupt = None, {}  # folder -> why it failed its checks
    for d in dirs:
        try:
            index = _open_checked(index_folder(path, d, key), key)
        except CorruptIndex as e:
            corrupt[d] = str(e)
            continue
        if index is not None:
            break
    # none usable: build in the first folder that can be written
    for n, d in enumerate(dirs if index is None else ()):
        folder = index_folder(path, d, key)
        if d in corrupt:
            log.warning("training-index cache %s is truncated or corrupt (%s): rebuilding it", folder, corrupt[d])
        try:
            _build_into(path, english_file, key, folder, d in corrupt)
        except OSError as e:
            if not _unwritable(e) or n == len(dirs) - 1:
                raise
            log.warning("training-index cache folder %s cannot be written (%s): indexing into %s instead",
                        d, e.strerror, dirs[n + 1])
            continue
        index = TrainIndex(folder)
        break
    log.info("training list %s: %d lines, %d queries; %d duplicate lines (the query text of an earlier line) "
             "merged into the first line of their text", path, index.lines, len(index), index.duplicate_lines)
    return index
