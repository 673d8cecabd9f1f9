"""Parsing of every annotation file of the Real400K / Real20M layout (docs/DATA_FORMAT.md).

Every malformed line raises `AnnotationError`, a `ValueError` whose message reads
`<file>:<line>: <what was expected>` so that a user of a 136 GB dataset can open the
offending line directly. Besides the whole-file parsers (`parse_train_file`,
`parse_item_list`, `parse_gt`) the per-line parsers and `iter_lines` are public: the
validator (`python -m datasets.validate`) streams files through them and keeps going
after an error to report every problem at once.

Reading conventions shared by all files: UTF-8 (a leading BOM is ignored), `\\n` or
`\\r\\n` line ends, blank lines are skipped in the list-like files, and surrounding
whitespace of each field is ignored. Line numbers are 1-based and count blank lines.
"""
import functools
import io
import os
import re
from dataclasses import dataclass, field

DIRECTIONS = ("video2goods", "goods2video")
QUERY_DOMAIN = {"video2goods": "video", "goods2video": "goods"}
GALLERY_DOMAIN = {"video2goods": "goods", "goods2video": "video"}
LIST_KINDS = ("query", "gallery", "gt")  # the three files of each direction under data.test_files
GOODS_TEXT_FIELDS = ("itemid", "category", "brand", "entity", "title", "desc")
VIDEO_TEXT_FIELDS = ("caption", "title", "text")
SHARD_MODULUS = 50000  # item files live in <pid % 50000>/<pid>.<ext>

_PID_RE = re.compile(r"^[0-9]+$")


class AnnotationError(ValueError):
    """A malformed annotation file; `path`, `line` (1-based, or None) and `expected` are kept."""

    def __init__(self, path, line, expected):
        self.path = str(path)
        self.line = line
        self.expected = expected
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {expected}")


def normalize_domain(name):
    """'goods' -> 'goods'; 'video' or its synonym 'photo' -> 'video' (case-insensitive)."""
    key = str(name).strip().lower()
    if key == "goods":
        return "goods"
    if key in ("video", "photo"):
        return "video"
    raise ValueError(f"unknown domain {name!r}: expected goods, video or photo")


def check_direction(direction):
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}: expected one of {', '.join(DIRECTIONS)}")
    return direction


def shard(pid):
    """Sub-folder name of an item: str(pid % 50000)."""
    return str(int(pid) % SHARD_MODULUS)


@functools.lru_cache(maxsize=None)
def _default_data():
    """configs/base.yaml's data section, for code that has no config: the schema is the one place where
    the default file and folder names are written (not to be modified: it is shared)."""
    from utils.config import SCHEMA_PATH, load_config

    return load_config(SCHEMA_PATH)["data"]


class DatasetPaths:
    """Where each file of docs/DATA_FORMAT.md lives under a data root (all paths are str).

    `train_file` and `test_files` ({direction: {"query", "gallery", "gt"}}) are the list files
    relative to `root`, as the config's data.train_file and data.test_files give them; `roots`
    ({key: folder}, as data.roots) places the item folders, each relative to the dataset folder
    `root/dataset` or absolute; a key left out, or None, takes the default of configs/base.yaml.
    `from_config` takes them all from a config's data section.
    """

    def __init__(self, root, dataset="Real400K", train_file=None, test_files=None, roots=None):
        self.root = os.fspath(root)
        self.dataset = dataset
        self.data_dir = os.path.join(self.root, dataset)
        self.queries = os.path.join(self.data_dir, "query", "queries.txt")
        self.entities_dir = os.path.join(self.root, "entities")
        defaults = _default_data()
        train_file = defaults["train_file"] if train_file is None else train_file
        test_files = defaults["test_files"] if test_files is None else test_files
        roots = dict(roots or {})
        unknown = set(roots) - set(defaults["roots"])
        if unknown:
            raise ValueError(f"unknown data.roots key(s) {', '.join(sorted(unknown))}: expected "
                             f"{', '.join(defaults['roots'])}")
        # {data.roots key: folder}; os.path.join keeps an absolute folder as it is
        self.roots = {key: os.path.join(self.data_dir, os.path.expanduser(os.fspath(
            default if roots.get(key) is None else roots[key]))) for key, default in defaults["roots"].items()}
        self.train_file = os.path.join(self.root, train_file)
        self._test_files = {(d, kind): os.path.join(self.root, test_files[d][kind])
                            for d in DIRECTIONS for kind in LIST_KINDS}
        # every config key naming a list file, by path (two keys may name the same file)
        self._keys = {self.train_file: ["data.train_file"]}
        for (d, kind), path in self._test_files.items():
            self._keys.setdefault(path, []).append(f"data.test_files.{d}.{kind}")

    @classmethod
    def from_config(cls, data):
        """The paths of a config's `data` section."""
        return cls(data["root"], data["dataset"], data["train_file"], data["test_files"], data["roots"])

    def config_keys(self, path):
        """The config keys that name the list file `path` ('data.train_file', 'data.test_files.<d>.<kind>')."""
        return " and ".join(self._keys.get(path, ["no config key"]))

    def require(self, *paths):
        """Check that list files exist; a missing one is an error naming the config key that points at it."""
        for path in paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"list file not found: {path} (set by {self.config_keys(path)}, "
                                        f"relative to data.root {self.root})")

    def images_dir(self, domain):
        """data.roots.goods_images or .video_images: test-list frame paths and frameid entries are relative to it."""
        return self.roots[f"{normalize_domain(domain)}_images"]

    def text_dir(self, domain):
        """data.roots.goods_texts or .video_texts: test-list text paths are relative to it."""
        return self.roots[f"{normalize_domain(domain)}_texts"]

    def text_path(self, domain, pid):
        return os.path.join(self.text_dir(domain), shard(pid), f"{int(pid)}.txt")

    def image_path(self, pid):
        """The goods image of `pid`."""
        return os.path.join(self.images_dir("goods"), shard(pid), f"{int(pid)}.jpg")

    def frameid_path(self, pid):
        return os.path.join(self.roots["frameid"], shard(pid), f"{int(pid)}.txt")

    def raw_video_path(self, pid):
        return os.path.join(self.roots["raw_videos"], shard(pid), f"{int(pid)}.mp4")

    def query_list(self, direction):
        return self._test_files[check_direction(direction), "query"]

    def gallery_list(self, direction):
        return self._test_files[check_direction(direction), "gallery"]

    def gt_file(self, direction):
        return self._test_files[check_direction(direction), "gt"]

    def direction_files(self, direction):
        """(query list, gallery list, gt file) of a direction."""
        return tuple(self._test_files[check_direction(direction), kind] for kind in LIST_KINDS)

    def entities_file(self, level):
        return os.path.join(self.entities_dir, f"level{int(level)}.txt")


def _open_text(path, read=None):
    """`path` opened as UTF-8 text; `read` (path -> bytes, a packed dataset's reader) gives its bytes instead,
    decoded with the same newline and BOM rules."""
    if read is None:
        return open(path, encoding="utf-8-sig")
    return io.TextIOWrapper(io.BytesIO(read(path)), encoding="utf-8-sig")


def _read_text(path, read=None):
    try:
        with _open_text(path, read) as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise AnnotationError(path, None, f"expected UTF-8 text ({e})") from None


def read_raw_lines(path, read=None):
    """The lines of a text file as Python's readlines gives them: each with its newline, but the last
    when the file does not end with one."""
    return io.StringIO(_read_text(path, read)).readlines()


def read_file_lines(path, read=None):
    """All lines of a small file (blank ones included); a final newline does not open an extra line."""
    lines = _read_text(path, read).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def iter_lines(path, read=None):
    """Stream (1-based line number, line without its newline) of the non-blank lines of a file."""
    try:
        with _open_text(path, read) as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield lineno, line
    except UnicodeDecodeError as e:
        raise AnnotationError(path, None, f"expected UTF-8 text ({e})") from None


def parse_pid(value, path, lineno, what="pid"):
    value = value.strip()
    if not _PID_RE.match(value):
        raise AnnotationError(path, lineno, f"expected {what} as a non-negative decimal integer, got {value!r}")
    return int(value)


def _split_fields(line, count, layout, path, lineno):
    fields = line.split("\t")
    if len(fields) != count:
        raise AnnotationError(path, lineno, f"expected {count} tab-separated fields ({layout}), got {len(fields)}")
    return [f.strip() for f in fields]


def read_goods_text(path, read=None):
    """The 6 fields of a goods text file; with another number of lines every field (the title included) is ''."""
    lines = read_file_lines(path, read)
    if len(lines) != len(GOODS_TEXT_FIELDS):
        return dict.fromkeys(GOODS_TEXT_FIELDS, "")
    return {name: line.strip() for name, line in zip(GOODS_TEXT_FIELDS, lines)}


def read_video_text(path, read=None):
    """caption, title, text of a video text file, read by position as the authors' loader does:
    the literal `null`, an empty line or a missing line gives None, lines past the third are
    ignored (`python -m datasets.validate` reports files without exactly 3 lines)."""
    lines = read_file_lines(path, read)
    out = {}
    for i, name in enumerate(VIDEO_TEXT_FIELDS):
        line = lines[i].strip() if i < len(lines) else ""
        out[name] = None if line in ("", "null") else line
    return out


def _split_frames(value, path, lineno):
    # a trailing comma is tolerated; an empty list is not
    frames = [p.strip() for p in value.split(",") if p.strip()]
    if not frames:
        raise AnnotationError(path, lineno, "expected at least one comma-separated frame path")
    return frames


def read_frame_ids(path, read=None):
    """Frame paths (relative to data.roots.video_images) of one frameid file: one comma-separated line."""
    lines = list(iter_lines(path, read))
    if not lines:
        raise AnnotationError(path, 1, "expected one line of comma-separated frame paths, the file is empty")
    if len(lines) > 1:
        raise AnnotationError(path, lines[1][0], "expected a single line of comma-separated frame paths")
    lineno, line = lines[0]
    return _split_frames(line, path, lineno)


def read_entities(path):
    """entities/level<k>.txt: one entity per non-blank line."""
    return [line.strip() for _, line in iter_lines(path)]


@dataclass
class TrainEntry:
    query: str
    goods: list = field(default_factory=list)
    videos: list = field(default_factory=list)
    english: str = None  # the optional 4th field: the query in English (None: not given)


def _pid_list(value, path, lineno, what):
    if value in ("None", ""):
        return []
    return [parse_pid(p, path, lineno, f"{what} pid") for p in value.split(",") if p.strip()]


def parse_train_line(line, path, lineno):
    fields = [f.strip() for f in line.split("\t")]
    if len(fields) not in (3, 4):
        raise AnnotationError(path, lineno, "expected 3 or 4 tab-separated fields (query, goods pids|None, "
                                            f"video pids|None[, English query]), got {len(fields)}")
    query, goods, videos = fields[:3]
    english = fields[3] if len(fields) == 4 and fields[3] else None
    if not query:
        raise AnnotationError(path, lineno, "expected a non-empty query text in field 1")
    entry = TrainEntry(query, _pid_list(goods, path, lineno, "goods"), _pid_list(videos, path, lineno, "video"),
                       english)
    if not entry.goods and not entry.videos:
        raise AnnotationError(path, lineno, "expected at least one goods or video pid (both fields are None)")
    return entry


def parse_train_file(path):
    """The training list (data.train_file) -> [TrainEntry] in file order."""
    return [parse_train_line(line, path, lineno) for lineno, line in iter_lines(path)]


def count_duplicate_queries(queries):
    """How many of `queries` (the query texts of training-list lines, in file order) repeat an earlier one:
    the lines that merge_duplicate_queries folds into an earlier line."""
    seen, repeats = set(), 0
    for query in queries:
        repeats += query in seen
        seen.add(query)
    return repeats


def merge_duplicate_queries(entries):
    """One TrainEntry per query text, at the position of its first line: the goods and videos of later lines
    of the text are appended (without repeats) and their English query fills one still missing. Two lines of
    one query would otherwise be two queries, each the other's false negative in a batch."""
    merged, first = [], {}
    for entry in entries:
        if entry.query not in first:
            first[entry.query] = len(merged)
            merged.append(TrainEntry(entry.query, list(entry.goods), list(entry.videos), entry.english))
            continue
        kept = merged[first[entry.query]]
        kept.goods += [p for p in entry.goods if p not in kept.goods]
        kept.videos += [p for p in entry.videos if p not in kept.videos]
        kept.english = kept.english or entry.english
    return merged


@dataclass
class TestItem:
    __test__ = False  # not a pytest class despite its name
    pid: int
    domain: str
    query: str
    frames: list
    text_path: str


def parse_item_line(line, path, lineno):
    pid, domain, query, frames, text_path = _split_fields(
        line, 5, "pid, domain, query_text, frame paths, text path", path, lineno)
    pid = parse_pid(pid, path, lineno)
    try:
        domain = normalize_domain(domain)
    except ValueError as e:
        raise AnnotationError(path, lineno, str(e)) from None
    frames = _split_frames(frames, path, lineno)
    if domain == "goods" and len(frames) != 1:
        raise AnnotationError(path, lineno, f"expected exactly one image path for a goods item, got {len(frames)}")
    if not text_path:
        raise AnnotationError(path, lineno, "expected a text path in field 5")
    return TestItem(pid, domain, query, frames, text_path)


def empty_list_error(path):
    """The error of a list file without any non-blank line, which would otherwise fail far from its cause."""
    return AnnotationError(path, None, "empty list: expected at least one non-blank line")


def check_inside(value, path, lineno, what):
    """`value` (a list's path, relative to an item folder of data.root) when it stays inside that folder;
    AnnotationError for an absolute path or one that climbs out with `..`, which would read another tree's files."""
    norm = os.path.normpath(value)
    if os.path.isabs(value) or norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise AnnotationError(path, lineno, f"expected a {what} relative to its folder under data.root, got "
                                            f"{value!r}, which leaves it")
    return value


def parse_item_list(path, domain=None):
    """A query or gallery list (data.test_files.<direction>.query/gallery) -> [TestItem] in file order;
    an empty list is an error, and so are a repeated pid, an item of another domain than `domain` (when given)
    and a frame or text path that leaves its folder (check_inside)."""
    items, seen = [], {}
    for lineno, line in iter_lines(path):
        item = parse_item_line(line, path, lineno)
        for frame in item.frames:
            check_inside(frame, path, lineno, "frame path")
        check_inside(item.text_path, path, lineno, "text path")
        if domain is not None and item.domain != domain:
            raise AnnotationError(path, lineno, f"expected a {domain} item (every item of this list), got {item.domain}")
        if item.pid in seen:
            raise AnnotationError(path, lineno, f"expected unique pids, {item.pid} already on line {seen[item.pid]}")
        seen[item.pid] = lineno
        items.append(item)
    if not items:
        raise empty_list_error(path)
    return items


def gt_id(value, path, lineno, is_query):
    """An id of a gt file, possibly written as a path: basename, no extension, and for queries
    nothing from the first '_' on (e.g. 'frames/12/12_3.jpg' -> 12)."""
    name = os.path.splitext(os.path.basename(value.strip().replace("\\", "/")))[0]
    if is_query:
        name = name.split("_", 1)[0]
    return parse_pid(name, path, lineno, "query id" if is_query else "gallery id")


def parse_gt_line(line, path, lineno):
    query, gallery = _split_fields(line, 2, "query id, gallery ids", path, lineno)
    ids = [gt_id(v, path, lineno, False) for v in gallery.split(",") if v.strip()]
    if not ids:
        raise AnnotationError(path, lineno, "expected at least one gallery id in field 2")
    return gt_id(query, path, lineno, True), ids


def parse_gt(path):
    """A gt file (data.test_files.<direction>.gt) -> {query pid: [relevant gallery pids]}; repeated query
    lines are merged."""
    gt = {}
    for lineno, line in iter_lines(path):
        query, ids = parse_gt_line(line, path, lineno)
        merged = gt.setdefault(query, [])
        for i in ids:
            if i not in merged:
                merged.append(i)
    return gt
