"""Feature files on disk.

Binary (ours): `<name>.npy` holds an [N, D] float16 or float32 matrix and a text file holds
the N item ids, one per line, in the same order. Text (the authors' format): one item per
line, `pid \\t f1,f2,...,fD`. The authors write one such file per rank and concatenate them;
their DistributedSampler pads the ranks with repeats of the first items, so an item may appear
twice: a repeat with the same values is dropped (the first line kept, the drops counted), one
with other values is an error naming both lines. Writes go through a temporary file and
`os.replace`, so an interrupted run never leaves a half-written file behind for a resume to trust, and a
failed write (a full disk) removes its temporary file.
"""
import contextlib
import os

import numpy as np

from datasets.annotations import AnnotationError, iter_lines, parse_pid

DTYPES = {"float16": np.float16, "float32": np.float32}
NPY_MAGIC = b"\x93NUMPY"
# a padded repeat is encoded again in another batch, whose kernels may round its unit-length feature
# differently; two distinct items differ far more than this in some value
REPEAT_ATOL = 1e-3


class NonFiniteFeatures(ValueError):
    """A feature row holds NaN or inf: it would be scored as if it meant something."""


class DiskFull(OSError):
    """A feature file did not fit on its disk (its partial file is removed); the message names the folder and
    the space needed."""


def _atomic(path, write):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:  # a full disk or an interrupt: no partial file is left behind
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(path, text):
    """A text file written atomically (newlines as given)."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    _atomic(path, write)


def save_npy(path, array):
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)
    _atomic(path, write)


def write_ids(path, ids):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(f"{i}\n" for i in ids)
    _atomic(path, write)


def read_ids(path):
    return [parse_pid(line, path, lineno, "item id") for lineno, line in iter_lines(path)]


def save_features(feats_path, ids_path, feats, ids, dtype="float32"):
    """Write an [N, D] matrix as .npy in `dtype` and its N ids, one per line."""
    feats = np.asarray(feats)
    if feats.ndim != 2 or feats.shape[0] != len(ids):
        raise ValueError(f"{feats_path}: expected an [N, D] matrix for {len(ids)} ids, got shape {feats.shape}")
    save_npy(feats_path, feats.astype(DTYPES[dtype], copy=False))
    write_ids(ids_path, ids)


def write_text_features(path, feats, ids):
    """The authors' format, `pid \\t f1,f2,...` per line, each value the shortest text that reads back as
    the same float32 (as their evaluation writes it)."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            for pid, row in zip(ids, np.asarray(feats, dtype=np.float32).tolist()):
                f.write(f"{pid}\t{','.join(map(str, row))}\n")
    _atomic(path, write)


def read_text_features(path):
    """Parse the authors' `pid \\t f1,f2,...` lines -> (float32 [N, D], ids, number of repeated lines dropped).

    An id on a second line with values within REPEAT_ATOL of its first line's is a padding repeat and is
    dropped; with other values it is an error naming both lines."""
    ids, rows, dim, first_line, repeats = [], [], None, {}, 0
    for lineno, line in iter_lines(path):
        fields = line.split("\t")
        if len(fields) != 2:
            raise AnnotationError(path, lineno, f"expected 2 tab-separated fields (pid, comma-separated floats), "
                                                f"got {len(fields)}")
        pid = parse_pid(fields[0], path, lineno, "item id")
        try:
            row = np.array(fields[1].split(","), dtype=np.float32)
        except ValueError:
            raise AnnotationError(path, lineno, "expected comma-separated floats in field 2") from None
        if dim is None:
            dim = row.size
        elif row.size != dim:
            raise AnnotationError(path, lineno, f"expected {dim} values like the first line, got {row.size}")
        if not np.isfinite(row).all():
            raise AnnotationError(path, lineno, "expected finite values in field 2, got NaN or inf")
        if pid in first_line:
            earlier, index = first_line[pid]
            gap = float(np.abs(row - rows[index]).max())
            if gap > REPEAT_ATOL:
                raise AnnotationError(path, lineno, f"item id {pid} is also on line {earlier}, with values that "
                                                    f"differ by up to {gap:.3g}; expected a repeated id to repeat "
                                                    f"its values (within {REPEAT_ATOL:g})")
            repeats += 1
            continue
        first_line[pid] = (lineno, len(rows))
        ids.append(pid)
        rows.append(row)
    if not rows:
        raise AnnotationError(path, None, "expected at least one feature line")
    return np.stack(rows), ids, repeats


def is_npy(path):
    """Whether `path` starts with NumPy's .npy header (else it is read as the authors' text format)."""
    with open(path, "rb") as f:
        return f.read(len(NPY_MAGIC)) == NPY_MAGIC


def _first_non_finite(feats, block_rows=1_000_000):
    """(row of the first non-finite value, number of such rows) of a matrix read block by block, or (None, 0)."""
    first, count = None, 0
    for start in range(0, feats.shape[0], block_rows):
        bad = np.flatnonzero(~np.isfinite(feats[start:start + block_rows]).all(axis=1))
        if bad.size and first is None:
            first = start + int(bad[0])
        count += bad.size
    return first, count


def load_features(feats_path, ids_path=None, mmap=False):
    """(float32 [N, D], ids) from a .npy + ids file, or from the authors' text format (ids inline, told apart
    by the .npy header; its repeated lines dropped and their count printed); mmap=True leaves a .npy
    memory-mapped in its stored dtype (a gallery larger than memory)."""
    if is_npy(feats_path):
        if ids_path is None:
            raise ValueError(f"{feats_path}: a .npy feature file needs its ids file (one id per line)")
        feats = np.load(feats_path, mmap_mode="r") if mmap else np.load(feats_path).astype(np.float32, copy=False)
        ids = read_ids(ids_path)
        if feats.ndim != 2 or feats.shape[0] != len(ids):
            raise ValueError(f"{feats_path}: expected an [N, D] matrix with one row per id of {ids_path} "
                             f"({len(ids)} ids), got shape {feats.shape}")
    else:
        feats, ids, repeats = read_text_features(feats_path)
        if repeats:
            print(f"{feats_path}: dropped {repeats} repeated lines (an item id again with the same values, as padded "
                  f"shards write them; the first line of each kept), {len(ids)} items remain", flush=True)
        if ids_path is not None and read_ids(ids_path) != ids:
            raise ValueError(f"{ids_path}: ids differ from the ids inside {feats_path}")
    first, count = _first_non_finite(feats)
    if count:
        raise NonFiniteFeatures(f"{feats_path}: row {first + 1} (item id {ids[first]}) holds NaN or inf values "
                                f"({count} of {len(ids)} rows do); expected finite features")
    seen = {}
    for row, pid in enumerate(ids):
        if pid in seen:
            raise ValueError(f"{ids_path or feats_path}: item id {pid} appears twice (rows {seen[pid] + 1} "
                             f"and {row + 1}); expected unique ids")
        seen[pid] = row
    return feats, ids


def write_shard(feats_path, ids_path, feats, indices, pids, dtype="float32"):
    """One rank's features; its ids file holds `list index \\t pid` lines so the merge can trim padding."""
    save_npy(feats_path, np.asarray(feats).astype(DTYPES[dtype], copy=False))
    write_ids(ids_path, [f"{i}\t{p}" for i, p in zip(indices, pids)])


def read_shard(feats_path, ids_path):
    indices, pids = [], []
    for lineno, line in iter_lines(ids_path):
        fields = line.split("\t")
        if len(fields) != 2:
            raise AnnotationError(ids_path, lineno, f"expected 2 tab-separated fields (list index, pid), got {len(fields)}")
        indices.append(parse_pid(fields[0], ids_path, lineno, "list index"))
        pids.append(parse_pid(fields[1], ids_path, lineno, "item id"))
    feats = np.load(feats_path)
    if feats.ndim != 2 or feats.shape[0] != len(pids):
        raise ValueError(f"{feats_path}: expected {len(pids)} rows like {ids_path}, got shape {feats.shape}")
    return feats, indices, pids


def merge_shards(shards, num_items):
    """[(feats, indices, pids)] of all ranks -> (feats, pids) in list order, each item exactly once.

    Ranks pad their share by repeating items; a repeated index is kept once (its pid must agree)."""
    dim = shards[0][0].shape[1]
    feats = np.zeros((num_items, dim), dtype=shards[0][0].dtype)
    pids = [None] * num_items
    for shard_feats, indices, shard_pids in shards:
        for row, (index, pid) in enumerate(zip(indices, shard_pids)):
            if index >= num_items:
                raise ValueError(f"shard index {index} is outside the list of {num_items} items")
            if pids[index] is None:
                pids[index] = pid
                feats[index] = shard_feats[row]
            elif pids[index] != pid:
                raise ValueError(f"list index {index} has pid {pids[index]} in one shard and {pid} in another")
    missing = [i for i, p in enumerate(pids) if p is None]
    if missing:
        raise ValueError(f"{len(missing)} of {num_items} items are in no shard (first list indices {missing[:5]})")
    return feats, pids
