"""The packed dataset (data.format=lmdb): the item files of a data root in LMDB shards, read by item id.

On a cluster's network file system a training video costs about 7 file opens (frameid, 5 frames, text) and
the item folders hold millions of small files; `scripts/pack_dataset.py` copies the files the run's lists
name into a few LMDB environments, so that a sample is one or two lookups in memory-mapped files.

Layout of a packed folder:
- `manifest.json`: what was packed (the list files with their SHA-256, data.roots, the packing options),
  the shards of each domain (`goods-00000`, `video-00000`, ...: consecutive ranges of sorted pids,
  first and last pid, item and entry counts, bytes, a SHA-256 over their entries), the unreadable source files.
- one LMDB environment (a folder) per shard, holding every file of its items under its path relative to the
  dataset folder (data.root/data.dataset), the bytes as they were or re-encoded (`--resize-short`);
  `!missing/<path>` for a source file that could not be read (the reason), `!item/<pid>` (the item's paths)
  and `!shard` (its manifest record).
A reader (`store.reader(domain, pid)`) is a function path -> bytes that the dataset's file readers take
(datasets.frames.load_image, datasets.annotations): the paths, the parsing and the errors are those of the
files, so both formats give the same samples and count the same unreadable items.
"""
import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import time
from bisect import bisect_right

import lmdb
import numpy as np
from PIL import Image

from datasets.annotations import (DIRECTIONS, AnnotationError, iter_lines, parse_item_line, parse_train_line,
                                  read_frame_ids)
from datasets.frames import UnreadableImage, load_image, require_regular_file
from utils.files import file_sha256

MANIFEST = "manifest.json"
PLAN = "pack.json"  # written first: the plan an interrupted pack resumes, and the folder's claim
PARTIAL = ".partial"  # a shard being written; renamed to its name once complete
FORMAT = 1
DOMAINS = ("goods", "video")
MISSING = b"!missing/"
ITEM = b"!item/"
SHARD = b"!shard"
ERRORS = b"!errors"


class PackError(ValueError):
    """A packed folder that cannot be used: missing, incomplete, corrupted or packed from other lists."""


def entry_key(data_dir, path):
    """The LMDB key of a file: its path relative to the dataset folder, with '/' separators."""
    return os.path.relpath(path, data_dir).replace(os.sep, "/").encode()


def read_manifest(folder):
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        unfinished = " (an unfinished pack: run scripts/pack_dataset.py again to resume it)" \
            if os.path.isfile(os.path.join(folder, PLAN)) else ""
        raise PackError(f"data.lmdb_root={folder}: no {MANIFEST}{unfinished}; pack the dataset with "
                        "scripts/pack_dataset.py ROOT OUT")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise PackError(f"{path}: packed with format {manifest.get('format')!r}, this code reads {FORMAT}: pack again")
    return manifest


def relative_roots(paths):
    """data.roots of `paths` relative to its dataset folder: what a packed folder's keys depend on."""
    return {key: os.path.relpath(folder, paths.data_dir) for key, folder in sorted(paths.roots.items())}


def run_lists(paths, evaluate, direction=None):
    """{config key: list path} of the list files a run reads: the training file, or one direction's lists."""
    if not evaluate:
        return {"data.train_file": paths.train_file}
    query, gallery, _ = paths.direction_files(direction)
    return {f"data.test_files.{direction}.query": query, f"data.test_files.{direction}.gallery": gallery}


def check_packed(folder, paths, lists):
    """PackError unless `folder` holds a complete pack of the list files `lists` ({config key: path}) as they
    are now, with the item folders of `paths` (preflight of data.format=lmdb)."""
    manifest = read_manifest(folder)
    packed = {entry["path"]: entry["sha256"] for entry in manifest["lists"].values()}
    for key, path in lists.items():
        rel = os.path.relpath(path, paths.root)
        if rel not in packed:
            raise PackError(f"data.lmdb_root={folder} was not packed from {key}={rel} (it holds "
                            f"{', '.join(sorted(packed))}): pack the lists of this run")
        if file_sha256(path) != packed[rel]:
            raise PackError(f"{key}={path} changed since data.lmdb_root={folder} was packed from it (SHA-256 "
                            "differs): pack again")
    if manifest["roots"] != relative_roots(paths):
        raise PackError(f"data.lmdb_root={folder} was packed with data.roots {manifest['roots']}, the run has "
                        f"{relative_roots(paths)}: the packed paths would not be found")


class FileStore:
    """data.format=files: every file is read from its folder (a reader of None: the readers open the path)."""

    def reader(self, domain, pid):
        return None


class LmdbStore:
    """data.format=lmdb: the files of `paths` (datasets.annotations.DatasetPaths) read from the shards under
    `folder`. The environments are opened on first use in each process, read-only and without locks; they
    are never pickled nor inherited across fork (a DataLoader worker opens its own)."""

    def __init__(self, paths, folder):
        self.folder = os.fspath(folder)
        self.data_dir = os.path.abspath(paths.data_dir)
        manifest = read_manifest(self.folder)
        self._first = {d: [s["first_pid"] for s in manifest["shards"][d]] for d in DOMAINS}
        self._last = {d: [s["last_pid"] for s in manifest["shards"][d]] for d in DOMAINS}
        self._names = {d: [s["name"] for s in manifest["shards"][d]] for d in DOMAINS}
        self._envs, self._pid = {}, None

    def __getstate__(self):
        return {**self.__dict__, "_envs": {}, "_pid": None}

    def env(self, name):
        """The shard's environment, opened in this process."""
        if self._pid != os.getpid():  # a forked child must not use its parent's handles
            self._envs, self._pid = {}, os.getpid()
        if name not in self._envs:
            self._envs[name] = open_shard(os.path.join(self.folder, name))
        return self._envs[name]

    def shard_of(self, domain, pid):
        """The name of the shard holding item `pid` of `domain`, or None."""
        i = bisect_right(self._first[domain], int(pid)) - 1
        return self._names[domain][i] if i >= 0 and pid <= self._last[domain][i] else None

    def reader(self, domain, pid):
        return functools.partial(self._read, self.shard_of(domain, pid), pid)

    def _read(self, name, pid, path):
        if name is None:
            raise UnreadableImage(path, f"item {pid} is not in the packed dataset {self.folder} (pack the lists "
                                        "this run reads)")
        key = entry_key(self.data_dir, path)
        with self.env(name).begin() as txn:
            value = txn.get(key)
            if value is None:
                reason = txn.get(MISSING + key)
                where = os.path.join(self.folder, name)
                raise UnreadableImage(path, f"unreadable when packed: {reason.decode()}" if reason is not None
                                      else f"not packed in {where}")
        return value


def open_shard(path, **options):
    if not os.path.isdir(path):
        raise PackError(f"{path}: LMDB shard not found (listed in {MANIFEST})")
    try:
        # readahead stays on: a frame is 50-200 KB of consecutive pages, which without it fault in one by one
        # (cold reads many times slower: benchmarks/bench_loader.py prints the ratio)
        return lmdb.open(path, readonly=True, lock=False, max_readers=2048, **options)
    except lmdb.Error as e:
        raise PackError(f"{path}: cannot open the LMDB shard ({e}); check the folder with "
                        f"python -m datasets.validate --packed {os.path.dirname(path)}") from None


# data.format -> (DatasetPaths, data.lmdb_root) -> the store that reads the item files
STORES = {"files": lambda paths, folder: FileStore(), "lmdb": LmdbStore}
DATA_FORMATS = tuple(STORES)


def open_store(data_format, paths, folder):
    """The store of data.format `data_format` for the item folders of `paths` (packed under `folder`)."""
    return STORES[data_format](paths, folder)


def shard_checksum(txn):
    """(entries, bytes, SHA-256) over the files of a shard in key order (the `!` records left out)."""
    digest, entries, size = hashlib.sha256(), 0, 0
    for key, value in txn.cursor():
        if key.startswith(b"!"):
            continue
        digest.update(len(key).to_bytes(4, "little") + key + len(value).to_bytes(8, "little"))
        digest.update(value)
        entries, size = entries + 1, size + len(value)
    return entries, size, digest.hexdigest()


# ----------------------------------------------------------------------------- what a pack holds

def plan_items(paths):
    """{domain: {pid: {"files": [(kind, path)], "frameid": path or None, "where": "list:line"}}} of every item
    the training file and the test lists name; an item named twice gets the union of its files."""
    items = {d: {} for d in DOMAINS}

    def add(domain, pid, where, files, frameid=None):
        item = items[domain].setdefault(pid, {"files": [], "frameid": None, "where": where})
        for f in files:
            if f not in item["files"]:
                item["files"].append(f)
        item["frameid"] = item["frameid"] or frameid

    for lineno, line in iter_lines(paths.train_file):
        entry = parse_train_line(line, paths.train_file, lineno)
        where = f"{paths.train_file}:{lineno}"
        for pid in entry.goods:
            add("goods", pid, where, [("image", paths.image_path(pid)), ("text", paths.text_path("goods", pid))])
        for pid in entry.videos:
            add("video", pid, where, [("text", paths.text_path("video", pid))], paths.frameid_path(pid))
    for list_path in test_lists(paths):
        for lineno, line in iter_lines(list_path):
            item = parse_item_line(line, list_path, lineno)
            images = [("image", os.path.join(paths.images_dir(item.domain), f)) for f in item.frames]
            add(item.domain, item.pid, f"{list_path}:{lineno}",
                images + [("text", os.path.join(paths.text_dir(item.domain), item.text_path))])
    return items


def test_lists(paths):
    """The query and gallery lists of data.test_files that exist, each once."""
    found = []
    for direction in DIRECTIONS:
        for path in paths.direction_files(direction)[:2]:
            if os.path.isfile(path) and path not in found:
                found.append(path)
    return found


def list_files(paths):
    """{config key(s): {"path" relative to data.root, "sha256", "bytes"}} of the list files a pack is made from."""
    out = {}
    for path in [paths.train_file] + test_lists(paths):
        out[paths.config_keys(path)] = {"path": os.path.relpath(path, paths.root), "sha256": file_sha256(path),
                                        "bytes": os.path.getsize(path)}
    return out


def shard_plan(items, shard_items):
    """[(name, domain, [pids])]: each domain's sorted pids cut into shards of at most `shard_items`."""
    shards = []
    for domain in DOMAINS:
        pids = sorted(items[domain])
        for n, start in enumerate(range(0, len(pids), shard_items)):
            shards.append((f"{domain}-{n:05d}", domain, pids[start:start + shard_items]))
    return shards


# ----------------------------------------------------------------------------- writing a pack

_COUNTER = None  # items packed so far, shared with the worker processes


def _set_counter(counter):
    global _COUNTER
    _COUNTER = counter


def read_source(path):
    """The bytes of a source file; UnreadableImage (with its reason) if missing or not a regular file."""
    require_regular_file(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UnreadableImage(path, e.strerror or type(e).__name__) from None


def _squashed(data, size):
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float64)


def encode_image(path, data, resize_short, quality, psnr_size):
    """-> (bytes to store, squared error at psnr_size or None): the source bytes, or re-encoded as JPEG with
    the short side brought to `resize_short`; UnreadableImage if the loader could not decode them."""
    load_image(path, read=lambda _: data)  # the loader's own decode and error rules
    if resize_short is None:
        return data, None
    with Image.open(io.BytesIO(data)) as img:
        if min(img.size) <= resize_short:
            return data, None
        scale = resize_short / min(img.size)
        size = (max(resize_short, round(img.width * scale)), max(resize_short, round(img.height * scale)))
        out = io.BytesIO()
        img.convert("RGB").resize(size, Image.BICUBIC).save(out, "JPEG", quality=quality)
    encoded = out.getvalue()
    return encoded, float(((_squashed(data, psnr_size) - _squashed(encoded, psnr_size)) ** 2).mean())


def pack_shard(job):
    """Write one shard under `<name>.partial`, then rename it to `<name>`: a folder with the shard's name is
    complete. -> its manifest record."""
    out, data_dir, video_images, name, domain, items, options = job
    partial = os.path.join(out, name + PARTIAL)
    env = lmdb.open(partial, map_size=1 << 40, subdir=True, readahead=False, meminit=False)
    record = {"name": name, "domain": domain, "items": len(items), "first_pid": items[0][0],
              "last_pid": items[-1][0], "source_bytes": 0, "missing": [], "resized": 0}
    squared_errors = []  # of the resized images, at psnr_size
    txn = env.begin(write=True)
    for n, (pid, item) in enumerate(items):
        files, keys = list(item["files"]), []

        def put(kind, path):
            key = entry_key(data_dir, path)
            keys.append(key.decode())
            try:
                data = read_source(path)
                record["source_bytes"] += len(data)
                if kind == "image":
                    data, error = encode_image(path, data, options["resize_short"], options["quality"],
                                               options["psnr_size"])
                    if error is not None:
                        record["resized"] += 1
                        squared_errors.append(error)
            except UnreadableImage as e:
                record["missing"].append({"pid": pid, "path": path, "reason": e.reason, "listed_at": item["where"]})
                txn.put(MISSING + key, e.reason.encode())
                return None
            txn.put(key, data)
            return data

        if item["frameid"] is not None:
            data = put("frameid", item["frameid"])
            if data is not None:
                try:
                    names = read_frame_ids(item["frameid"], read=lambda _: data)
                except AnnotationError:
                    names = []  # kept as it is: the loader reports it as it does for the file
                frames = [("image", os.path.join(video_images, name)) for name in names]
                files += [f for f in dict.fromkeys(frames) if f not in files]
        for kind, path in files:
            put(kind, path)
        txn.put(ITEM + str(pid).encode(), json.dumps(keys).encode())
        if _COUNTER is not None:
            with _COUNTER.get_lock():
                _COUNTER.value += 1
        if n % 256 == 255:  # bounded write transactions
            txn.commit()
            txn = env.begin(write=True)
    txn.commit()
    with env.begin(write=True) as txn:
        record["entries"], record["bytes"], record["sha256"] = shard_checksum(txn)
        txn.put(SHARD, json.dumps(record).encode())
        txn.put(ERRORS, json.dumps(squared_errors).encode())
    env.sync(True)
    env.close()
    os.rename(partial, os.path.join(out, name))
    return record


def shard_record(path):
    """-> (the shard's manifest record, the squared errors of its resized images)."""
    with open_shard(path) as env, env.begin() as txn:
        record, errors = txn.get(SHARD), txn.get(ERRORS)
    if record is None or errors is None:
        raise PackError(f"{path}: LMDB shard without its !shard record: remove it and pack again")
    return json.loads(record), json.loads(errors)


def _claim(out, plan):
    """Make `out` this plan's folder: a new (or empty) one, or an unfinished pack of the same plan. Anything
    else is an error, so that nothing is overwritten."""
    plan_path = os.path.join(out, PLAN)
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.isfile(plan_path):
            raise PackError(f"{out}: folder not empty and not a pack: choose a new folder")
        with open(plan_path, encoding="utf-8") as f:
            existing = json.load(f)
        if existing != plan:
            changed = sorted(k for k in plan if plan[k] != existing.get(k))
            raise PackError(f"{out}: holds a pack of other {' and '.join(changed)}; remove it or choose another "
                            "folder")
        return os.path.isfile(os.path.join(out, MANIFEST))
    os.makedirs(out, exist_ok=True)
    _write_json(plan_path, plan)
    return False


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Progress:
    """Prints items done, items/s and the ETA at most every `every` seconds."""

    def __init__(self, total, log, every=2.0):
        self.time, self.total, self.log, self.every = time.monotonic, total, log, every
        self.start = self.last = self.time()

    def show(self, done, final=False):
        now = self.time()
        if not final and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        self.log(f"packed {done}/{self.total} items, {rate:.0f} items/s, ETA "
                 f"{'?' if eta == float('inf') else f'{eta:.0f} s'}")


def pack(paths, out, *, shard_items=10000, resize_short=None, quality=90, psnr_size=224, workers=0, log=print):
    """Pack the items of the lists of `paths` (DatasetPaths) into `out`; resumes an unfinished pack of the
    same lists and options. -> the manifest."""
    options = {"shard_items": shard_items, "resize_short": resize_short, "quality": quality, "psnr_size": psnr_size}
    items = plan_items(paths)
    shards = shard_plan(items, shard_items)
    plan = {"format": FORMAT, "dataset": paths.dataset, "lists": list_files(paths), "roots": relative_roots(paths),
            "options": options, "shards": [[name, len(pids), pids[0], pids[-1]] for name, _, pids in shards]}
    if _claim(out, plan):
        log(f"{out}: already packed from these lists and options")
        return read_manifest(out)
    for entry in os.listdir(out):
        if entry.endswith(PARTIAL):  # an interrupted shard: written again from the start
            shutil.rmtree(os.path.join(out, entry))
    data_dir, video_images = os.path.abspath(paths.data_dir), paths.images_dir("video")
    done = [name for name, _, _ in shards if os.path.isdir(os.path.join(out, name))]
    jobs = [(out, data_dir, video_images, name, domain, [(pid, items[domain][pid]) for pid in pids], options)
            for name, domain, pids in shards if name not in done]
    if done:
        log(f"{out}: resuming, {len(done)} of {len(shards)} shards already complete")
    total = sum(len(job[5]) for job in jobs)
    counter = multiprocessing.Value("q", 0)
    progress = Progress(total, log)
    if workers > 0:
        with multiprocessing.Pool(workers, initializer=_set_counter, initargs=(counter,)) as pool:
            result = pool.map_async(pack_shard, jobs, chunksize=1)
            while not result.ready():
                result.wait(0.5)
                progress.show(counter.value)
            result.get()
    else:
        _set_counter(counter)
        try:
            for job in jobs:
                pack_shard(job)
                progress.show(counter.value)
        finally:
            _set_counter(None)
    progress.show(counter.value, final=True)
    records, errors = {d: [] for d in DOMAINS}, []
    for name, domain, _ in shards:
        record, shard_errors = shard_record(os.path.join(out, name))
        records[domain].append(record)
        errors += shard_errors
    missing = [m for d in DOMAINS for r in records[d] for m in r["missing"]]
    packed_bytes = sum(r["bytes"] for d in DOMAINS for r in records[d])
    source_bytes = sum(r["source_bytes"] for d in DOMAINS for r in records[d])
    resize = None
    if errors:
        psnr = [10 * math.log10(255 ** 2 / max(e, 1e-10)) for e in errors]
        resize = {"images": len(errors), "psnr_mean_db": sum(psnr) / len(psnr), "psnr_min_db": min(psnr)}
    manifest = {**{k: v for k, v in plan.items() if k != "shards"}, "shards": records,
                "counts": {"goods": len(items["goods"]), "video": len(items["video"]), "missing_files": len(missing),
                           "source_bytes": source_bytes, "packed_bytes": packed_bytes},
                "resize": resize, "missing": missing, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    _write_json(os.path.join(out, MANIFEST), manifest)
    return manifest


# ----------------------------------------------------------------------------- checking a pack

def validate_packed(folder, decode_images=False):
    """The problems of a packed folder against its manifest (a list of lines naming the shard): shards missing,
    unreadable, with another record, other entries or checksum, unfinished `.partial` shards; with
    `decode_images`, every packed image that does not decode."""
    manifest = read_manifest(folder)
    problems = [f"{os.path.join(folder, e)}: unfinished shard" for e in sorted(os.listdir(folder))
                if e.endswith(PARTIAL)]
    for domain in DOMAINS:
        for record in manifest["shards"][domain]:
            path = os.path.join(folder, record["name"])
            try:
                with open_shard(path) as env, env.begin() as txn:
                    problems += [f"{path}: {line}" for line in _shard_problems(txn, record, decode_images)]
            except PackError as e:
                problems.append(str(e))
            except (lmdb.Error, ValueError) as e:  # ValueError: a damaged !shard record
                problems.append(f"{path}: unreadable LMDB shard ({e})")
    return problems, manifest


def _shard_problems(txn, record, decode_images):
    stored = txn.get(SHARD)
    if stored is None or json.loads(stored) != record:
        yield f"its !shard record differs from {MANIFEST}"
    entries, size, digest = shard_checksum(txn)
    if (entries, size, digest) != (record["entries"], record["bytes"], record["sha256"]):
        yield (f"corrupted: {entries} entries, {size} bytes, SHA-256 {digest[:12]}; {MANIFEST} says "
               f"{record['entries']}, {record['bytes']}, {record['sha256'][:12]}")
    items = sum(1 for key in txn.cursor().iternext(keys=True, values=False) if key.startswith(ITEM))
    if items != record["items"]:
        yield f"{items} items, {MANIFEST} says {record['items']}"
    if decode_images:
        for key, value in txn.cursor():
            if not key.startswith(b"!") and key.lower().endswith((b".jpg", b".jpeg", b".png")):
                try:
                    load_image(key.decode(), read=lambda _, v=value: v)
                except UnreadableImage as e:
                    yield f"{key.decode()} does not decode ({e.reason})"
