"""Generate a small synthetic dataset in exactly the Real400K layout of docs/DATA_FORMAT.md.

    python scripts/make_mini_dataset.py --out data/mini [--seed 0] [--num-queries 300] ...

or, from Python, `scripts.make_mini_dataset.generate(out, seed=0, num_queries=300, ...)`.

Design
------
The world is made of *products*. Each product has a hidden *concept*: four attributes,
each taking one of a few values, named by short Chinese words with synonyms:

- category (8 values, e.g. 杯子/水杯, 背包/书包, 帽子): drawn as the object's **shape**
  (circle, square, triangle, diamond, star, hexagon, cross, ring);
- colour (8 values, 红色, 蓝色, ...): the object's **fill colour**, jittered per image;
- pattern (4 values, 纯色, 条纹, 波点, 格子): the **texture** inside the shape;
- material (4 values, 纯棉, 真皮, 金属, 实木): **text only**, never visible.

That is 1,024 concepts. The signal is redundant but incomplete in each modality:

- a *query* is a short Chinese phrase naming the concept (category almost always, each
  other attribute with probability 0.6-0.8, synonyms, filler words such as 同款 or 推荐);
- a *goods item* is one image (the object fairly large on a light background, position,
  scale, rotation, colour jitter, pixel noise, sometimes an occluding patch) and a
  6-line text whose title mentions each attribute with probability 0.5-0.7, sometimes
  names a wrong value, and carries a brand and selling words;
- a *video item* is 6-9 JPEG frames (the object smaller, moving across a cluttered
  background, brightness changing, one or two clutter frames showing another object) and
  a 3-line text (caption, title, text) with the same kind of noisy words, any line
  possibly the literal `null`.

So vision alone cannot tell materials apart (4 concepts share every look) and misreads
small patterns; text alone misses attributes the title happens not to mention. The noise
levels are chosen so that a small model trained a few minutes on CPU lands far above
chance (R@10 of chance is 1 % with 1,000-item galleries) and well below 100 %.

Splits (defaults in brackets):
- training: `num_queries` [300] products, each a line of the training list with 1-3
  goods and 1-3 videos (15 % of the queries goods only, 15 % videos only);
- video2goods: `num_test_queries` [100] new products, each one query video and 1-3
  relevant goods; the goods gallery is filled up to `gallery_size` [1000] with goods of
  other random products (which may share the concept: look-alike, not relevant);
- goods2video: the same with one query goods item and 1-3 relevant videos against a
  video gallery.
Test products draw their concepts independently of training, so most test concepts
are combinations never seen in training.

Format details exercised on purpose: pids are large random integers (shard folders
`pid % 50000`), video items of the test lists use the authors' domain name `photo`, about
a fifth of the gt lines write ids as paths (`<shard>/<pid>_0.jpg` for the query), a few
training goods texts have a wrong number of lines (their title counts as empty), and
the first `num_raw_videos` [8] training videos (all with -1) also exist as
`video/raw/<shard>/<pid>.mp4` (PyAV, mpeg4) holding the same frames.

The list files get the default names of configs/base.yaml (data.train_file, data.test_files).

Pre-training entities follow the hidden concept, coarse to fine: level 1 the category's group
(家居用品, 4 entities), level 2 the category (杯子, 8), level 3 colour and category (红色杯子, 64),
so that level 2 and 3 are visible in the images; entities/mini_item_level3.tsv records every
item's level-3 entity for the demo's check of EPL's pseudo-labels.

Every random choice comes from generators seeded by (seed, item), so the same seed
gives byte-identical files.
"""
import argparse
import math
import os
import random
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datasets.annotations import DIRECTIONS, DatasetPaths, shard  # noqa: E402

# (shape, words, level-1 entity); the first word is the canonical name
CATEGORIES = [
    ("circle", ["杯子", "水杯", "马克杯"], "家居用品"),
    ("square", ["背包", "书包", "双肩包"], "箱包配饰"),
    ("triangle", ["帽子", "棒球帽", "渔夫帽"], "服饰鞋帽"),
    ("diamond", ["围巾", "丝巾", "披肩"], "服饰鞋帽"),
    ("star", ["台灯", "夜灯", "护眼灯"], "家居用品"),
    ("hexagon", ["手表", "腕表", "电子表"], "数码配件"),
    ("cross", ["耳机", "蓝牙耳机", "头戴耳机"], "数码配件"),
    ("ring", ["抱枕", "靠垫", "靠枕"], "家居用品"),
]
COLOURS = [
    ((215, 40, 40), ["红色", "大红", "酒红"]),
    ((245, 135, 25), ["橙色", "橘色", "橘黄"]),
    ((235, 210, 30), ["黄色", "明黄", "鹅黄"]),
    ((45, 165, 65), ["绿色", "草绿", "墨绿"]),
    ((40, 85, 215), ["蓝色", "天蓝", "宝蓝"]),
    ((135, 55, 185), ["紫色", "浅紫", "香芋紫"]),
    ((240, 125, 175), ["粉色", "粉红", "樱花粉"]),
    ((35, 35, 35), ["黑色", "纯黑", "暗黑"]),
]
PATTERNS = [["纯色", "素色"], ["条纹", "横条纹", "竖条"], ["波点", "圆点", "点点"], ["格子", "格纹", "棋盘格"]]
MATERIALS = [["纯棉", "棉质", "棉麻"], ["真皮", "皮质", "牛皮"], ["金属", "不锈钢", "合金"], ["实木", "木质", "原木"]]
BRANDS = ["优品", "简约家", "木子", "初见", "拾光", "小白", "悦生活", "野趣", "青禾", "北屿", "南风", "橙心"]
SELLING = ["包邮", "新款", "热卖", "正品", "官方旗舰", "限时特价", "爆款", "2024新品", "送礼", "百搭"]
QUERY_FILLERS = ["同款", "推荐", "好看的", "求", "平价", "女生", "ins风", "网红"]
VIDEO_TAGS = ["#好物分享", "#开箱", "#种草", "#日常vlog", "#穿搭", "#家居好物"]
CAPTION_OPENERS = ["大家好今天给大家分享", "最近入手了", "终于买到了", "给你们看看这个"]
ATTRIBUTE_SIZES = (len(CATEGORIES), len(COLOURS), len(PATTERNS), len(MATERIALS))
# entities/<TRUTH_FILE>: "domain<TAB>pid<TAB>level-3 entity" of every item, the hidden truth that lets the
# pre-training demo score pseudo-labels; not part of the dataset format
TRUTH_FILE = "mini_item_level3.tsv"
AUTHORS_VIDEO_DOMAIN = "photo"  # the micro-video domain as the authors' test lists name it (read as video)


def _words(attribute, value):
    if attribute == 0:
        return CATEGORIES[value][1]
    if attribute == 1:
        return COLOURS[value][1]
    return (PATTERNS, MATERIALS)[attribute - 2][value]


def _word(rng, attribute, value, wrong_prob=0.0):
    """A synonym naming the value, or (with wrong_prob) a word of another value."""
    if rng.random() < wrong_prob:
        value = (value + rng.randrange(1, ATTRIBUTE_SIZES[attribute])) % ATTRIBUTE_SIZES[attribute]
    return rng.choice(_words(attribute, value))


def random_concept(rng):
    return tuple(rng.randrange(n) for n in ATTRIBUTE_SIZES)


# ----------------------------------------------------------------------------- texts

def query_text(concept, rng):
    mods = [_word(rng, attr, concept[attr]) for attr, keep in ((1, 0.8), (2, 0.6), (3, 0.6)) if rng.random() < keep]
    rng.shuffle(mods)
    if rng.random() < 0.95 or not mods:
        mods.append(_word(rng, 0, concept[0]))
    if rng.random() < 0.35:
        mods.insert(0, rng.choice(QUERY_FILLERS))
    if rng.random() < 0.2:
        mods.append(rng.choice(QUERY_FILLERS))
    return "".join(mods)


def _attribute_words(concept, rng, keep_probs, wrong_prob):
    words = [_word(rng, attr, concept[attr], wrong_prob) for attr, keep in enumerate(keep_probs)
             if rng.random() < keep]
    rng.shuffle(words)
    return words


def goods_text_lines(pid, concept, rng):
    brand = rng.choice(BRANDS)
    words = _attribute_words(concept, rng, (0.7, 0.6, 0.5, 0.55), wrong_prob=0.1)
    selling = rng.sample(SELLING, rng.randint(1, 3))
    title = " ".join([brand, "".join(words[:2]), "".join(words[2:]), *selling])
    _, cat_words, level1 = CATEGORIES[concept[0]]
    desc = f"{rng.choice(['舒适耐用', '质感很好', '做工精细', '简约大方'])}，{_word(rng, 3, concept[3], 0.3)}材质"
    return [str(pid), f"{level1}/{cat_words[0]}", brand, cat_words[0], " ".join(title.split()), desc]


def video_text_lines(concept, rng):
    words = _attribute_words(concept, rng, (0.6, 0.55, 0.45, 0.5), wrong_prob=0.1)
    caption = rng.choice(CAPTION_OPENERS) + "".join(words[:3]) if words else rng.choice(CAPTION_OPENERS)
    title = " ".join(rng.sample(VIDEO_TAGS, 2)) + " " + "".join(rng.sample(words, len(words)))
    text = "".join(_attribute_words(concept, rng, (0.4, 0.4, 0.3, 0.4), 0.1)) + rng.choice(
        ["真的很好用", "颜值超高", "性价比很高", "推荐给大家", "链接在评论区"])
    return [line.strip() if rng.random() >= 0.3 else "null" for line in (caption, title, text)]


# ---------------------------------------------------------------------------- images

def _shape_mask(size, shape, cx, cy, radius, angle):
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)

    def polygon(points):
        c, s = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + radius * (x * c - y * s), cy + radius * (x * s + y * c)) for x, y in points], fill=255)

    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        r = radius * 0.5
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=0)
    elif shape == "square":
        polygon([(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)])
    elif shape == "triangle":
        polygon([(0, -1), (0.95, 0.75), (-0.95, 0.75)])
    elif shape == "diamond":
        polygon([(0, -1), (0.7, 0), (0, 1), (-0.7, 0)])
    elif shape == "star":
        polygon([(math.sin(k * math.pi / 5) * (1 if k % 2 == 0 else 0.45),
                  -math.cos(k * math.pi / 5) * (1 if k % 2 == 0 else 0.45)) for k in range(10)])
    elif shape == "hexagon":
        polygon([(math.cos(k * math.pi / 3), math.sin(k * math.pi / 3)) for k in range(6)])
    elif shape == "cross":
        w = 0.33
        polygon([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)])
    return mask


def _texture(size, pattern, colour, rng, period):
    img = Image.new("RGB", (size, size), colour)
    if pattern == 0:
        return img
    # light colours get dark marks and dark colours light ones
    mark = tuple(int(c * 0.35) for c in colour) if sum(colour) > 300 else (235, 235, 235)
    draw = ImageDraw.Draw(img)
    period = max(4, int(period))
    offset = rng.randrange(period)
    if pattern == 1:
        width = max(1, period // 2)
        for k in range(-size, 2 * size, period):
            if rng.random() < 0.5:
                draw.line([(k + offset, 0), (k + offset + size // 3, size)], fill=mark, width=width)
            else:
                draw.line([(k + offset, 0), (k + offset, size)], fill=mark, width=width)
    elif pattern == 2:
        r = max(1, period // 4)
        for y in range(offset, size + period, period):
            for x in range(offset, size + period, period):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=mark)
    else:
        for y in range(0, size + period, period):
            for x in range(0, size + period, period):
                if ((x + y) // period) % 2 == 0:
                    draw.rectangle([x + offset, y, x + offset + period // 2, y + period // 2], fill=mark)
    return img


def _jitter(colour, rng, amount):
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)


def _draw_object(canvas, concept, rng, cx, cy, radius):
    size = canvas.size[0]
    shape = CATEGORIES[concept[0]][0]
    colour = _jitter(COLOURS[concept[1]][0], rng, 25)
    angle = rng.uniform(-0.35, 0.35) if shape not in ("circle", "ring") else 0.0
    texture = _texture(size, concept[2], colour, rng, period=radius * rng.uniform(0.45, 0.7))
    canvas.paste(texture, (0, 0), _shape_mask(size, shape, cx, cy, radius, angle))


def _finish(canvas, rng, noise, brightness):
    arr = np.asarray(canvas, dtype=np.float32) * brightness
    np_rng = np.random.default_rng(rng.getrandbits(32))
    arr += np_rng.normal(0.0, noise, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def render_goods(concept, rng, size):
    canvas = Image.new("RGB", (size, size), _jitter((245, 245, 242), rng, 10))
    radius = size * rng.uniform(0.25, 0.42)
    margin = size / 2 - radius
    cx = size / 2 + rng.uniform(-0.6, 0.6) * margin
    cy = size / 2 + rng.uniform(-0.6, 0.6) * margin
    _draw_object(canvas, concept, rng, cx, cy, radius)
    if rng.random() < 0.2:  # an occluding sticker or hand
        draw = ImageDraw.Draw(canvas)
        w = size * rng.uniform(0.15, 0.3)
        x, y = rng.uniform(0, size - w), rng.uniform(0, size - w)
        draw.rectangle([x, y, x + w, y + w], fill=_jitter((200, 170, 150), rng, 30))
    return _finish(canvas, rng, noise=5.0, brightness=rng.uniform(0.9, 1.05))


def _cluttered_background(size, rng):
    bg = Image.new("RGB", (size, size), _jitter((150, 150, 150), rng, 60))
    draw = ImageDraw.Draw(bg)
    for _ in range(rng.randint(3, 7)):
        x0, y0 = rng.uniform(0, size), rng.uniform(0, size)
        x1, y1 = x0 + rng.uniform(-size / 2, size / 2), y0 + rng.uniform(-size / 2, size / 2)
        fill = _jitter((150, 150, 150), rng, 80)
        if rng.random() < 0.5:
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=fill)
        else:
            draw.line([(x0, y0), (x1, y1)], fill=fill, width=rng.randint(1, 3))
    return bg


def render_video(concept, rng, size, num_frames):
    background = _cluttered_background(size, rng)
    radius = size * rng.uniform(0.2, 0.34)
    start = [rng.uniform(radius * 0.6, size - radius * 0.6) for _ in range(2)]
    end = [rng.uniform(radius * 0.6, size - radius * 0.6) for _ in range(2)]
    clutter = set(rng.sample(range(num_frames), rng.randint(1, 2)))
    frames = []
    for k in range(num_frames):
        canvas = background.copy()
        t = k / max(1, num_frames - 1)
        cx, cy = (a + (b - a) * t for a, b in zip(start, end))
        if k in clutter:  # a frame showing something else: another product or a hand-held prop
            _draw_object(canvas, random_concept(rng), rng, cx, cy, radius * rng.uniform(0.8, 1.2))
        else:
            _draw_object(canvas, concept, rng, cx, cy, radius * rng.uniform(0.9, 1.1))
        frames.append(_finish(canvas, rng, noise=8.0, brightness=rng.uniform(0.75, 1.15)))
    return frames


def write_mp4(path, frames, fps=5):
    import av

    with av.open(path, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 400_000
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# --------------------------------------------------------------------------- writing

class _Writer:
    """Owns the pid space and writes each item's files where DatasetPaths says they live."""

    def __init__(self, out, seed, image_size, frames_range, num_raw_videos):
        self.paths = DatasetPaths(out)
        self.seed = seed
        self.size = image_size
        self.frames_range = frames_range
        self.raw_left = num_raw_videos
        self.pid_rng = random.Random(f"{seed}/pids")
        self.used = {"goods": set(), "video": set()}
        self.bad_goods_texts_left = 3
        self.made = []  # (domain, pid, concept) of every item, in order

    def _rng(self, domain, pid):
        return random.Random(f"{self.seed}/{domain}/{pid}")

    def _new_pid(self, domain):
        while True:
            pid = self.pid_rng.randrange(100_000, 2_000_000_000)
            if pid not in self.used[domain]:
                self.used[domain].add(pid)
                return pid

    @staticmethod
    def write_lines(path, lines):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(line + "\n" for line in lines))

    @staticmethod
    def _save_jpeg(img, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        img.save(path, format="JPEG", quality=90)

    def goods(self, concept, allow_bad_text=False):
        pid = self._new_pid("goods")
        self.made.append(("goods", pid, concept))
        rng = self._rng("goods", pid)
        self._save_jpeg(render_goods(concept, rng, self.size), self.paths.image_path(pid))
        lines = goods_text_lines(pid, concept, rng)
        if allow_bad_text and self.bad_goods_texts_left and rng.random() < 0.05:
            self.bad_goods_texts_left -= 1
            lines = lines[:4]  # truncated file: the loader must count it and use an empty title
        self.write_lines(self.paths.text_path("goods", pid), lines)
        return pid

    def video(self, concept, raw_allowed=False):
        pid = self._new_pid("video")
        self.made.append(("video", pid, concept))
        rng = self._rng("video", pid)
        frames = render_video(concept, rng, self.size, rng.randint(*self.frames_range))
        rel = [f"{shard(pid)}/{pid}_{k}.jpg" for k in range(len(frames))]
        for img, name in zip(frames, rel):
            self._save_jpeg(img, os.path.join(self.paths.images_dir("video"), name))
        self.write_lines(self.paths.frameid_path(pid), [",".join(rel)])
        self.write_lines(self.paths.text_path("video", pid), video_text_lines(concept, rng))
        if raw_allowed and self.raw_left != 0:
            self.raw_left -= 1
            path = self.paths.raw_video_path(pid)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_mp4(path, frames)
        return pid, rel

    @staticmethod
    def item_line(pid, domain_name, query, frames):
        return "\t".join([str(pid), domain_name, query, ",".join(frames), f"{shard(pid)}/{pid}.txt"])


def _gt_id_field(pid, is_query, as_path):
    if not as_path:
        return str(pid)
    return f"{shard(pid)}/{pid}_0.jpg" if is_query else f"{shard(pid)}/{pid}.jpg"


def generate(out, seed=0, num_queries=300, num_test_queries=100, gallery_size=1000, image_size=64,
             min_frames=6, max_frames=9, max_items=3, num_raw_videos=8):
    """Write the whole dataset under `out` and return its DatasetPaths."""
    if num_queries < 1 or num_test_queries < 1:
        raise ValueError("num_queries and num_test_queries must be at least 1")
    if gallery_size < num_test_queries * max_items:
        raise ValueError(f"gallery_size={gallery_size} must be at least num_test_queries * max_items = "
                         f"{num_test_queries * max_items} (room for every relevant item)")
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    if image_size < 16 or image_size % 2:
        raise ValueError(f"image_size must be an even number >= 16 (mp4 needs even sizes), got {image_size}")
    w = _Writer(out, seed, image_size, (min_frames, max_frames), num_raw_videos)
    rng = random.Random(f"{seed}/structure")
    all_queries = []

    train_lines = []
    for _ in range(num_queries):
        concept = random_concept(rng)
        query = query_text(concept, rng)
        kind = rng.random()
        goods = [] if kind < 0.15 else [w.goods(concept, allow_bad_text=True) for _ in range(rng.randint(1, max_items))]
        videos = [] if 0.15 <= kind < 0.3 else [w.video(concept, raw_allowed=True)[0]
                                                for _ in range(rng.randint(1, max_items))]
        all_queries.append(query)
        train_lines.append("\t".join([query, ",".join(map(str, goods)) or "None", ",".join(map(str, videos)) or "None"]))
    w.write_lines(w.paths.train_file, train_lines)

    for direction in DIRECTIONS:
        query_domain = "video" if direction == "video2goods" else "goods"

        def make(domain, concept, query):
            if domain == "goods":
                pid = w.goods(concept)
                return pid, w.item_line(pid, "goods", query, [f"{shard(pid)}/{pid}.jpg"])
            pid, frames = w.video(concept)
            return pid, w.item_line(pid, AUTHORS_VIDEO_DOMAIN, query, frames)

        gallery_domain = "goods" if query_domain == "video" else "video"
        query_lines, gallery, gt_lines = [], [], []
        for _ in range(num_test_queries):
            concept = random_concept(rng)
            query = query_text(concept, rng)
            all_queries.append(query)
            qpid, line = make(query_domain, concept, query)
            query_lines.append(line)
            relevant = [make(gallery_domain, concept, query) for _ in range(rng.randint(1, max_items))]
            gallery.extend(line for _, line in relevant)
            as_path = rng.random() < 0.2
            gt_lines.append(_gt_id_field(qpid, True, as_path) + "\t" +
                            ",".join(_gt_id_field(pid, False, as_path) for pid, _ in relevant))
        while len(gallery) < gallery_size:
            concept = random_concept(rng)
            gallery.append(make(gallery_domain, concept, query_text(concept, rng))[1])
        rng.shuffle(gallery)
        w.write_lines(w.paths.query_list(direction), query_lines)
        w.write_lines(w.paths.gallery_list(direction), gallery)
        w.write_lines(w.paths.gt_file(direction), gt_lines)

    w.write_lines(w.paths.queries, all_queries)
    for level in (1, 2, 3):
        w.write_lines(w.paths.entities_file(level), sorted({entity(c, level) for c in _all_concepts()}))
    w.write_lines(os.path.join(w.paths.entities_dir, TRUTH_FILE),
                  [f"{domain}\t{pid}\t{entity(concept, 3)}" for domain, pid, concept in w.made])
    return w.paths


def _all_concepts():
    return [(c, k, 0, 0) for c in range(len(CATEGORIES)) for k in range(len(COLOURS))]


def entity(concept, level):
    """The concept's entity of `level`: 1 the category's group (家居用品), 2 the category (杯子),
    3 colour and category (红色杯子), coarse to fine and all but the group visible in images."""
    category = CATEGORIES[concept[0]]
    if level == 1:
        return category[2]
    if level == 2:
        return category[1][0]
    return COLOURS[concept[1]][1][0] + category[1][0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True,
                        help="dataset root to create (holds Real400K/ and the list files at their default names)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-queries", type=int, default=300, help="training queries")
    parser.add_argument("--num-test-queries", type=int, default=100, help="test queries per direction")
    parser.add_argument("--gallery-size", type=int, default=1000, help="gallery items per direction")
    parser.add_argument("--image-size", type=int, default=64, help="pixels (square images and frames)")
    parser.add_argument("--min-frames", type=int, default=6)
    parser.add_argument("--max-frames", type=int, default=9)
    parser.add_argument("--max-items", type=int, default=3, help="most goods / videos per query")
    parser.add_argument("--num-raw-videos", type=int, default=8, help="training videos also written as .mp4 (-1: all)")
    args = parser.parse_args(argv)
    start = time.time()
    paths = generate(args.out, seed=args.seed, num_queries=args.num_queries, num_test_queries=args.num_test_queries,
                     gallery_size=args.gallery_size, image_size=args.image_size, min_frames=args.min_frames,
                     max_frames=args.max_frames, max_items=args.max_items, num_raw_videos=args.num_raw_videos)
    print(f"wrote {paths.root} in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
