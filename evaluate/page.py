"""A self-contained HTML page of retrieval results, after Figure 5 of the paper.

The run's R@K heads the page. Each row: a sampled query (blue box), the rank of its first
correct item in the whole ranked list, and its top-k retrievals by descending score, ground
truth in green boxes and the rest in red, with thumbnails (a few frames of a video, the
image of a product), titles and scores; rows wrap to the window. Images are embedded as
base64 JPEG, so the single file can be mailed or opened anywhere.
"""
import base64
import html
import io
import os
import random

import numpy as np
from PIL import Image

from datasets.frames import require_regular_file
from datasets.packed import FileStore
from evaluate.features import write_text

THUMB = (160, 120)  # max width, height of one embedded thumbnail
VIDEO_FRAMES = 3  # frames shown per video, evenly spaced over its clip
COLORS = {"query": "#1f5fd6", "gt": "#00a000", "other": "#e00000"}

STYLE = f"""
body {{ font-family: "Noto Sans CJK SC", "WenQuanYi Micro Hei", "PingFang SC", "Microsoft YaHei", sans-serif; margin: 16px; background: #fff; color: #222; }}
.row {{ display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; margin: 14px 0; padding-bottom: 8px;
        border-bottom: 1px solid #ddd; }}
.rank {{ flex-basis: 100%; font-size: 13px; }}
.summary {{ font-size: 15px; }}
.item {{ border: 5px solid; padding: 3px; width: 210px; font-size: 11px; flex: none; }}
.query {{ border-color: {COLORS['query']}; margin-right: 14px; }}
.gt {{ border-color: {COLORS['gt']}; }}
.other {{ border-color: {COLORS['other']}; }}
.thumbs {{ display: flex; gap: 2px; height: 64px; align-items: center; overflow: hidden; }}
.thumbs img {{ height: 64px; min-width: 0; flex: 0 1 auto; object-fit: contain; }}
.missing {{ width: 60px; height: 50px; background: #ccc; }}
.title {{ overflow: hidden; height: 2.6em; }}
"""


def thumbnail(path, read=None):
    """base64 JPEG of an image, or None when it cannot be read (a FIFO or device among them, never opened);
    `read` (path -> bytes, datasets.packed): the image's bytes from a packed dataset instead of the file."""
    try:
        if read is None:
            require_regular_file(path)
        with Image.open(path if read is None else io.BytesIO(read(path))) as im:
            im = im.convert("RGB")
            im.thumbnail(THUMB)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except OSError:
        return None
    return base64.b64encode(buf.getvalue()).decode("ascii")


def dataset_items(paths, list_path, store=None):
    """describe(pid) -> {"title", "images", "read"} for the items of a query or gallery list (texts read on
    demand); `store` (datasets.packed, data.format): where the files are read, their folders by default."""
    from datasets.annotations import parse_item_list, read_goods_text, read_video_text
    from datasets.frames import segment_indices

    items = {item.pid: item for item in parse_item_list(list_path)}
    store = store or FileStore()

    def describe(pid):
        item = items[pid]
        read = store.reader(item.domain, pid)
        text_path = os.path.join(paths.text_dir(item.domain), item.text_path)
        try:
            if item.domain == "goods":
                title = read_goods_text(text_path, read)["title"]
            else:
                text = read_video_text(text_path, read)
                title = text["title"] or text["caption"] or text["text"] or ""
        except OSError:
            title = "(text file missing)"
        shown = dict.fromkeys(segment_indices(len(item.frames), VIDEO_FRAMES))  # segment centres, each once
        images = [os.path.join(paths.images_dir(item.domain), item.frames[i]) for i in shown]
        return {"title": title, "images": images, "read": read}

    return describe


def _item_html(kind, info, caption):
    thumbs = []
    for path in info["images"]:
        data = thumbnail(path, info.get("read"))
        thumbs.append(f'<img src="data:image/jpeg;base64,{data}">' if data else
                      f'<div class="missing" title="{html.escape(path)}"></div>')
    return (f'<div class="item {kind}"><div class="thumbs">{"".join(thumbs)}</div>'
            f'<div class="title">{html.escape(info["title"])}</div><div>{html.escape(caption)}</div></div>')


def first_correct(ranked_ids, relevant, no_relevant_in_gallery=False):
    """The line saying where a query's first ground-truth item is in its whole ranked list (-1: no item)."""
    ranked = [pid for pid in ranked_ids if pid >= 0]
    for rank, pid in enumerate(ranked, 1):
        if pid in relevant:
            return f"first correct item at rank {rank}"
    if no_relevant_in_gallery:
        return "no relevant item in the gallery"
    return f"no correct item in the top {len(ranked)}"


def summary_html(results):
    """R@K and hit rate of the run (a results.json dict), for the top of the page."""
    recall = "  ".join(f"R@{k} {v:.2f}" for k, v in results["recall"].items())
    hits = "  ".join(f"@{k} {v:.2f}" for k, v in results["hit_rate"].items())
    return (f'<p class="summary"><b>{html.escape(recall)}</b> | hit rate {html.escape(hits)} | '
            f'{results["num_queries"]} queries, gallery {results["num_gallery"]}</p>')


def render_page(rows, out_path, title, results=None):
    """rows: [(query pid, query info, first-correct line, [(gallery pid, info, score, is_gt), ...])] -> HTML file;
    `results` (a results.json dict): the run's R@K at the top."""
    body = []
    for qid, qinfo, where, retrieved in rows:
        cells = [_item_html("query", qinfo, f"query {qid}")]
        for rank, (pid, info, score, is_gt) in enumerate(retrieved, 1):
            cells.append(_item_html("gt" if is_gt else "other", info, f"#{rank}  {pid}  score {score:.3f}"))
        body.append(f'<div class="row"><div class="rank">query {qid}: {html.escape(where)}</div>{"".join(cells)}</div>')
    legend = (f'<span style="color:{COLORS["query"]}">query</span> | '
              f'<span style="color:{COLORS["gt"]}">ground truth</span> | '
              f'<span style="color:{COLORS["other"]}">not in the ground truth</span>')
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{STYLE}</style></head><body><h2>{html.escape(title)}</h2>'
            f'{summary_html(results) if results else ""}<p>{legend}</p>{"".join(body)}</body></html>')
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    write_text(out_path, page)  # atomic: a full disk or a kill leaves the previous page, never half of one
    return out_path


def build_page(ranking_path, gt_path, describe_query, describe_gallery, out_path, num_queries=20, topk=10,
               seed=0, title="retrieval results", results=None):
    """Sample queries that have ground truth from ranking.npz (written by the search) and render them;
    `results`: the search's results.json dict (R@K at the top of the page)."""
    from datasets.annotations import parse_gt

    ranking = np.load(ranking_path)
    gt = parse_gt(gt_path)
    candidates = [q for q, qid in enumerate(ranking["query_ids"].tolist()) if qid in gt]
    chosen = sorted(random.Random(seed).sample(candidates, min(num_queries, len(candidates))))
    no_relevant = set((results or {}).get("no_relevant_in_gallery", ()))
    rows = []
    for q in chosen:
        qid = int(ranking["query_ids"][q])
        relevant = set(gt[qid])
        ranked = ranking["gallery_ids"][q].tolist()
        retrieved = [(pid, describe_gallery(pid), float(score), pid in relevant)
                     for pid, score in zip(ranked[:topk], ranking["scores"][q, :topk].tolist()) if pid >= 0]
        rows.append((qid, describe_query(qid), first_correct(ranked, relevant, qid in no_relevant), retrieved))
    return render_page(rows, out_path, title, results)
