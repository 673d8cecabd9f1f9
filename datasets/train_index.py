"""The training list as flat, memory-mapped arrays that every rank and DataLoader worker shares.

Parsed into Python objects, Real20M's training list (about a million queries) costs every rank a
minute and a gigabyte, and the objects' reference counts make forked workers copy their pages.
`load_train_index(path, cache_dir)` parses the file once (with the parser of datasets.annotations,
so errors still name file and line) into six arrays: the query texts as one UTF-8 buffer with
offsets, and the goods and video pids with per-query offsets. They are saved as .npy files in a
folder of `cache_dir` named after the file's path, size and modification time, written under a
temporary name and renamed into place, so a partial cache is never used and an edited file gets a
new one. Opened with mmap, the pages are the page cache's, shared by every process of the node.
"""
import hashlib
import json
import logging
import os
import shutil
import time

import numpy as np

from datasets.annotations import TrainEntry, iter_lines, parse_train_line

log = logging.getLogger(__name__)

ARRAYS = ("query_bytes", "query_offsets", "goods", "goods_offsets", "videos", "videos_offsets")
FORMAT = 1  # bump when the arrays change meaning
CACHE_DIR_NAME = ".train_index"  # the default cache folder, beside the training file


def _key(path):
    st = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "format": FORMAT}


def _folder(path, cache_dir, key):
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{os.path.basename(path)}.{digest}")


def _build(path, out):
    """Parse `path` line by line into the arrays of ARRAYS, saved in the folder `out`."""
    text, text_offsets = bytearray(), [0]
    pids = {"goods": [], "videos": []}
    offsets = {"goods": [0], "videos": [0]}
    for lineno, line in iter_lines(path):
        entry = parse_train_line(line, path, lineno)
        text += entry.query.encode("utf-8")
        text_offsets.append(len(text))
        for name, items in (("goods", entry.goods), ("videos", entry.videos)):
            pids[name] += items
            offsets[name].append(len(pids[name]))
    os.makedirs(out)
    arrays = {"query_bytes": np.frombuffer(bytes(text), dtype=np.uint8),
              "query_offsets": np.asarray(text_offsets, dtype=np.int64)}
    for name in ("goods", "videos"):
        arrays[name] = np.asarray(pids[name], dtype=np.int64)
        arrays[name + "_offsets"] = np.asarray(offsets[name], dtype=np.int64)
    for name in ARRAYS:
        np.save(os.path.join(out, name + ".npy"), arrays[name])


class TrainIndex:
    """The training list in file order: `len()`, `query(i)`, `goods(i)`, `videos(i)`, and `index[i]` as a
    datasets.annotations.TrainEntry (what the sampler and the training dataset read)."""

    def __init__(self, folder):
        self.folder = folder
        self._open()

    def _open(self):
        # plain ndarray views of the mapped files: slicing them is several times faster than slicing np.memmap
        a = {name: np.asarray(np.load(os.path.join(self.folder, name + ".npy"), mmap_mode="r")) for name in ARRAYS}
        self._text, self._text_offsets = a["query_bytes"], a["query_offsets"]
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
        return TrainEntry(self.query(i), self.goods(i), self.videos(i))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def item_lists(self):
        """(goods, videos) of every query in order, without decoding the query texts (the sampler's epoch plan)."""
        (goods, go), (videos, vo) = self._pids["goods"], self._pids["videos"]
        for i in range(len(self)):
            yield goods[go[i]:go[i + 1]].tolist(), videos[vo[i]:vo[i + 1]].tolist()


def load_train_index(path, cache_dir=None):
    """The TrainIndex of the training list `path`, from its cache in `cache_dir` (default: the
    CACHE_DIR_NAME folder beside the file) or built there first. Safe to call from several processes
    at once: each builds under its own temporary name and the first rename wins."""
    key = _key(path)
    cache_dir = cache_dir or os.path.join(os.path.dirname(os.path.abspath(path)), CACHE_DIR_NAME)
    folder = _folder(path, cache_dir, key)
    meta = os.path.join(folder, "meta.json")
    if not os.path.exists(meta):
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{folder}.partial{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        start = time.perf_counter()
        _build(path, tmp)
        log.info("indexed %s in %.1f s into %s (later runs map it)", path, time.perf_counter() - start, folder)
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(key, f)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process renamed its copy first
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.exists(meta):
                raise
    return TrainIndex(folder)
