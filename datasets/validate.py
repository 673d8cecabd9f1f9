"""Check a dataset root against every rule of docs/DATA_FORMAT.md.

    python -m datasets.validate ROOT [--dataset Real400K] [--max-items N] [--decode-images]
    python -m datasets.validate --config CFG [ROOT] ...   root, dataset, list files and item folders of CFG's data section
    python -m datasets.validate --packed DIR [--decode-images]   a packed folder (data.lmdb_root) against its manifest

Prints counts and every problem (file:line and what was expected), grouped by kind,
and exits with status 1 when a rule is violated. Warnings (allowed by the format but
worth knowing: a goods text with another number of lines, a gt query whose relevant
items are all missing from the gallery (it scores 0), ...) do not change the status.

A list file (train, query/gallery/gt, and query/queries.txt, which is optional and read by
nothing else, when present) without any non-blank line is an error. The item folders are those
of data.roots (`--config`), else the default layout.
Annotation files are streamed line by line, so the real Real400K (hundreds of
thousands of items) is fine; the per-item file checks (image, text, frameid and frame
files exist, and each image file is non-empty and starts like a JPEG, PNG, GIF, BMP or
WEBP: its first 12 bytes are read, it is decoded only with `--decode-images`) touch
every referenced item unless `--max-items N` limits them to a fixed random sample of N
items per group, and the shard-folder scan to N files per folder.
"""
import argparse
import os
import random
import re
import sys
from collections import defaultdict

from datasets.annotations import (DIRECTIONS, GALLERY_DOMAIN, GOODS_TEXT_FIELDS, QUERY_DOMAIN, SHARD_MODULUS,
                                  VIDEO_TEXT_FIELDS, AnnotationError, DatasetPaths, count_duplicate_queries,
                                  empty_list_error, iter_lines, read_file_lines, parse_gt_line, parse_item_line,
                                  parse_train_line, read_frame_ids, shard)

# data.roots key -> extension of the <pid % 50000>/<pid>.<ext> files its folder holds (video_images: any names)
SHARDED_FOLDERS = (("goods_images", ".jpg"), ("goods_texts", ".txt"), ("frameid", ".txt"), ("video_texts", ".txt"),
                   ("raw_videos", ".mp4"))
OPTIONAL_ROOTS = ("raw_videos",)  # only data.frame_source=raw reads it

# how files of the image formats PIL opens begin, as PIL's own format checks test it; 12 bytes cover them all
IMAGE_SIGNATURES = {"JPEG": rb"\xff\xd8\xff", "PNG": rb"\x89PNG\r\n\x1a\n", "GIF": rb"GIF8[79]a", "BMP": rb"BM",
                    "WEBP": rb"RIFF....WEBP"}
_IMAGE_START = re.compile(b"|".join(IMAGE_SIGNATURES.values()), re.DOTALL)


class Report:
    """Problems grouped by kind (errors violate the format, warnings do not) and counts."""

    def __init__(self, max_examples=20):
        self.max_examples = max_examples
        self.problems = {"error": defaultdict(list), "warning": defaultdict(list)}
        self.totals = {"error": defaultdict(int), "warning": defaultdict(int)}
        self.counts = {}

    def add(self, severity, kind, message):
        self.totals[severity][kind] += 1
        if len(self.problems[severity][kind]) < self.max_examples:
            self.problems[severity][kind].append(message)

    def error(self, kind, message):
        self.add("error", kind, message)

    def warning(self, kind, message):
        self.add("warning", kind, message)

    @property
    def num_errors(self):
        return sum(self.totals["error"].values())

    @property
    def ok(self):
        return self.num_errors == 0

    def format(self):
        out = ["counts:"] + [f"  {name}: {value}" for name, value in self.counts.items()]
        for severity in ("error", "warning"):
            for kind, total in sorted(self.totals[severity].items()):
                out.append(f"{severity.upper()} {kind}: {total}")
                out += [f"  {m}" for m in self.problems[severity][kind]]
                if total > len(self.problems[severity][kind]):
                    out.append(f"  ... and {total - len(self.problems[severity][kind])} more")
        errors, warnings = self.num_errors, sum(self.totals["warning"].values())
        out.append(f"{'OK' if self.ok else 'FAILED'}: {errors} violation(s), {warnings} warning(s)")
        return "\n".join(out)


def _sample(mapping, max_items):
    """All (key, value) pairs, or a fixed random sample of max_items of them."""
    keys = sorted(mapping)
    if max_items is not None and len(keys) > max_items:
        keys = sorted(random.Random(0).sample(keys, max_items))
    return [(k, mapping[k]) for k in keys]


class _Validator:
    def __init__(self, paths, max_items, decode_images, report):
        self.paths = paths
        self.max_items = max_items
        self.decode_images = decode_images
        self.report = report

    # -- single files -----------------------------------------------------------------

    def check_image(self, path, where):
        if not os.path.isfile(path):
            self.report.error("missing image", f"{where}: expected image {path}")
            return
        # 12 bytes are cheap enough for every file and catch empty files and non-images (e.g. saved error pages)
        try:
            with open(path, "rb") as f:
                head = f.read(12)
        except OSError as e:
            self.report.error("unreadable image", f"{where}: {path}: {e}")
            return
        if not head:
            self.report.error("unreadable image", f"{where}: {path}: zero-byte file, expected an image")
            return
        if not _IMAGE_START.match(head):
            self.report.error("unreadable image", f"{where}: {path}: not an image: starts with {head!r}, expected "
                                                  f"{', '.join(IMAGE_SIGNATURES)}")
            return
        if self.decode_images:
            from PIL import Image

            try:
                with Image.open(path) as im:
                    im.load()
            except Exception as e:  # PIL raises many types for corrupt files
                self.report.error("unreadable image", f"{where}: {path}: {e}")

    def check_text(self, path, domain, where):
        if not os.path.isfile(path):
            self.report.error(f"missing {domain} text", f"{where}: expected text file {path}")
            return
        try:
            lines = read_file_lines(path)
        except AnnotationError as e:
            self.report.error(f"unreadable {domain} text", f"{where}: {e}")
            return
        expected = len(GOODS_TEXT_FIELDS if domain == "goods" else VIDEO_TEXT_FIELDS)
        if len(lines) != expected:
            effect = "its title counts as empty" if domain == "goods" else "its text counts as empty"
            self.report.warning(f"{domain} text with {expected} lines expected",
                                f"{path}: {len(lines)} lines ({effect})")

    def check_frames(self, frames, domain, where):
        images_dir = self.paths.images_dir(domain)
        for frame in frames:
            self.check_image(os.path.join(images_dir, frame), where)

    def check_video(self, pid, where):
        frameid = self.paths.frameid_path(pid)
        if not os.path.isfile(frameid):
            self.report.error("missing frameid file", f"{where}: expected frame list {frameid}")
        else:
            try:
                self.check_frames(read_frame_ids(frameid), "video", where)
            except AnnotationError as e:
                self.report.error("bad frameid file", str(e))
        self.check_text(self.paths.text_path("video", pid), "video", where)

    # -- the parts of the layout ---------------------------------------------------------

    def check_layout(self):
        p = self.paths
        for key, path in p.roots.items():
            if key not in OPTIONAL_ROOTS and not os.path.isdir(path):
                self.report.error("missing from layout", f"expected folder {path} (data.roots.{key})")
        for path in (p.train_file, *(f for d in DIRECTIONS for f in p.direction_files(d))):
            if not os.path.isfile(path):
                self.report.error("missing list file", f"expected {path} (set by {p.config_keys(path)})")
        for level in (1, 2, 3):
            path = p.entities_file(level)
            if not os.path.isfile(path):
                self.report.warning("missing entity list", f"expected {path} (needed by pre-training only)")
            else:
                self.report.counts[f"entities level{level}"] = sum(1 for _ in self.lines(path))

    def lines(self, path, required=False):
        """Non-blank lines of a file; an unreadable file is reported once and yields nothing, and so
        is a `required` (list) file without any."""
        if not os.path.isfile(path):
            return
        count = 0
        try:
            for count, numbered in enumerate(iter_lines(path), 1):
                yield numbered
        except AnnotationError as e:
            self.report.error("unreadable file", str(e))
            return
        if required and not count:
            self.report.error("empty list", str(empty_list_error(path)))

    def check_queries(self):
        if not os.path.isfile(self.paths.queries):
            self.report.counts["queries.txt lines"] = "absent (optional)"
            return
        self.report.counts["queries.txt lines"] = sum(1 for _ in self.lines(self.paths.queries, required=True))

    def check_train(self):
        path = self.paths.train_file
        goods, videos = {}, {}
        queries = []
        n = goods_only = video_only = 0
        for lineno, line in self.lines(path, required=True):
            try:
                entry = parse_train_line(line, path, lineno)
            except AnnotationError as e:
                self.report.error("bad train line", str(e))
                continue
            n += 1
            queries.append(entry.query)
            goods_only += not entry.videos
            video_only += not entry.goods
            for pid in entry.goods:
                goods.setdefault(pid, f"{path}:{lineno}")
            for pid in entry.videos:
                videos.setdefault(pid, f"{path}:{lineno}")
        self.report.counts.update({"train lines": n, "train lines with goods only": goods_only,
                                   "train lines with videos only": video_only,
                                   # training merges these into the first line of their text
                                   "train lines repeating an earlier query text": count_duplicate_queries(queries),
                                   "train goods": len(goods), "train videos": len(videos)})
        for pid, where in _sample(goods, self.max_items):
            self.check_image(self.paths.image_path(pid), where)
            self.check_text(self.paths.text_path("goods", pid), "goods", where)
        for pid, where in _sample(videos, self.max_items):
            self.check_video(pid, where)

    def read_items(self, path, domain):
        """pid -> (TestItem, 'file:line') of a query or gallery list whose items must all be of `domain`."""
        items = {}
        for lineno, line in self.lines(path, required=True):
            where = f"{path}:{lineno}"
            try:
                item = parse_item_line(line, path, lineno)
            except AnnotationError as e:
                self.report.error("bad item line", str(e))
                continue
            if item.domain != domain:
                self.report.error("wrong domain", f"{where}: expected domain {domain}, got {item.domain}")
                continue
            if item.pid in items:
                self.report.error("duplicate pid", f"{where}: pid {item.pid} already on {items[item.pid][1]}")
                continue
            expected_text = f"{shard(item.pid)}/{item.pid}.txt"
            if os.path.normpath(item.text_path) != os.path.normpath(expected_text):
                self.report.error("not in the pid % 50000 layout",
                                  f"{where}: expected text path {expected_text}, got {item.text_path}")
            if domain == "goods" and os.path.normpath(item.frames[0]) != os.path.normpath(
                    f"{shard(item.pid)}/{item.pid}.jpg"):
                self.report.error("not in the pid % 50000 layout",
                                  f"{where}: expected image path {shard(item.pid)}/{item.pid}.jpg, got {item.frames[0]}")
            items[item.pid] = (item, where)
        return items

    def check_items(self, items):
        for pid, (item, where) in _sample(items, self.max_items):
            self.check_frames(item.frames, item.domain, where)
            self.check_text(os.path.join(self.paths.text_dir(item.domain), item.text_path), item.domain, where)
            if item.domain == "video" and not os.path.isfile(self.paths.frameid_path(pid)):
                self.report.warning("test video without frameid file", f"{where}: {self.paths.frameid_path(pid)}")

    def check_direction(self, direction):
        p = self.paths
        queries = self.read_items(p.query_list(direction), QUERY_DOMAIN[direction])
        gallery = self.read_items(p.gallery_list(direction), GALLERY_DOMAIN[direction])
        gt_path = p.gt_file(direction)
        seen, pairs = set(), 0
        for lineno, line in self.lines(gt_path, required=True):
            where = f"{gt_path}:{lineno}"
            try:
                query, relevant = parse_gt_line(line, gt_path, lineno)
            except AnnotationError as e:
                self.report.error("bad gt line", str(e))
                continue
            if query not in queries:
                self.report.error("gt query not in the query list",
                                  f"{where}: expected query {query} in {p.query_list(direction)}")
            seen.add(query)
            present = [pid for pid in relevant if pid in gallery]
            pairs += len(present)
            if not present:
                self.report.warning("gt query without any relevant item in the gallery",
                                    f"{where}: query {query} will score 0 at every K")
            elif len(present) < len(relevant):
                self.report.warning("gt item not in the gallery",
                                    f"{where}: {len(relevant) - len(present)} of {len(relevant)} relevant ids absent")
        for pid, (_, where) in queries.items():
            if pid not in seen:  # the evaluation refuses to score such a query
                self.report.error("query without gt line", f"{where}: query {pid} has no line in {gt_path}")
        self.report.counts.update({f"{direction} queries": len(queries), f"{direction} gallery": len(gallery),
                                   f"{direction} gt queries": len(seen), f"{direction} relevant pairs": pairs})
        self.check_items(queries)
        self.check_items(gallery)

    def check_shard_folders(self):
        folders = {}  # folder -> {extension: [data.roots keys]}: keys naming one folder scan it once
        for key, ext in SHARDED_FOLDERS:
            folders.setdefault(os.path.normpath(self.paths.roots[key]), {}).setdefault(ext, []).append(key)
        frames_dir = os.path.normpath(self.paths.roots["video_images"])
        for top, by_ext in folders.items():
            keys = " and ".join(k for ks in by_ext.values() for k in ks)
            if not os.path.isdir(top):
                continue
            if top == frames_dir:
                self.report.warning("shard folder scan skipped", f"{top}: data.roots.{keys} is also "
                                    "data.roots.video_images, whose frames may have any name")
                continue
            names = " or ".join(f"<pid>{ext}" for ext in by_ext)
            checked = 0
            with os.scandir(top) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    if not entry.is_dir() or not entry.name.isdigit() or int(entry.name) >= SHARD_MODULUS:
                        self.report.error("not in the pid % 50000 layout",
                                          f"{entry.path}: expected a sub-folder named pid % {SHARD_MODULUS}")
                        continue
                    with os.scandir(entry.path) as files:
                        for f in files:
                            name, fext = os.path.splitext(f.name)
                            if fext not in by_ext or not name.isdigit() or int(name) % SHARD_MODULUS != int(entry.name):
                                self.report.error("not in the pid % 50000 layout",
                                                  f"{f.path}: expected {names} with pid % {SHARD_MODULUS} == "
                                                  f"{entry.name}")
                            checked += 1
                    if self.max_items is not None and checked >= self.max_items:
                        break
            self.report.counts[f"{keys} files scanned"] = checked


def validate(root, dataset="Real400K", max_items=None, decode_images=False, max_examples=20, train_file=None,
             test_files=None, roots=None):
    """Check `root` (the folder holding <dataset>/, entities/ and the list files); returns a Report.
    `train_file`, `test_files` and `roots` are as data.train_file, data.test_files and data.roots (None:
    the defaults)."""
    report = Report(max_examples)
    v = _Validator(DatasetPaths(root, dataset, train_file, test_files, roots), max_items, decode_images, report)
    v.check_layout()
    if not any(os.path.isdir(folder) for folder in v.paths.roots.values()):
        return report  # no item folder at all: the root or dataset is wrong, per-item errors would only repeat it
    v.check_queries()
    v.check_train()
    for direction in DIRECTIONS:
        v.check_direction(direction)
    v.check_shard_folders()
    return report


def check_packed_folder(folder, decode_images):
    """Print the problems of a packed folder (datasets.packed.validate_packed); 1 if any."""
    from datasets.packed import PackError, validate_packed

    try:
        problems, manifest = validate_packed(folder, decode_images)
    except PackError as e:
        print(f"ERROR {e}")
        return 1
    shards = [s for domain in manifest["shards"].values() for s in domain]
    print(f"counts:\n  shards: {len(shards)}\n  items: {sum(s['items'] for s in shards)}\n"
          f"  files packed as missing: {manifest['counts']['missing_files']}")
    for line in problems:
        print(f"ERROR {line}")
    return 1 if problems else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check a dataset root against docs/DATA_FORMAT.md.")
    parser.add_argument("root", nargs="?", help="folder holding Real400K/ (or Real20M/), entities/ and the list files "
                                                "(default with --config: its data.root)")
    parser.add_argument("--config", help="take data.root, data.dataset, data.train_file, data.test_files and "
                                         "data.roots from this config")
    parser.add_argument("--dataset", help="sub-folder holding the item folders (default: Real400K or the config's "
                                          "data.dataset)")
    parser.add_argument("--max-items", type=int, default=None,
                        help="check the files of at most N sampled items per group (default: all)")
    parser.add_argument("--decode-images", action="store_true", help="also decode every checked image")
    parser.add_argument("--max-examples", type=int, default=20, help="problems printed per kind")
    parser.add_argument("--packed", metavar="DIR", help="check a folder of scripts/pack_dataset.py (its shards' "
                                                         "entries and checksums against manifest.json) instead")
    args = parser.parse_args(argv)
    if args.packed:
        return check_packed_folder(args.packed, args.decode_images)
    if args.config:
        from utils.config import load_config

        data = load_config(args.config)["data"]
    elif args.root is None:
        parser.error("give ROOT or --config")
    else:
        data = {"root": args.root, "dataset": "Real400K", "train_file": None, "test_files": None, "roots": None}
    report = validate(args.root or data["root"], args.dataset or data["dataset"], args.max_items, args.decode_images,
                      args.max_examples, data["train_file"], data["test_files"], data["roots"])
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
