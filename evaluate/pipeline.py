"""One evaluation run from a config: extraction of eval.direction's query and gallery features, their
provenance, search and scoring, the result page and the export for the authors' index scripts.

Each function reads the config's sections and passes explicit arguments to evaluate.extract, .search,
.metrics and .page; evaluation.py is the command line over them. An evaluation (extract or run) holds a lock on
each output folder it writes, so a second one on the same folders stops at once, naming the first.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time

import numpy as np

from evaluate.extract import FEATURES, extract_features, merged_paths
from evaluate.features import load_features, write_text, write_text_features
from evaluate.metrics import SEARCH_KS, recall_at_k, search_ks
from evaluate.search import normalize, search_gallery
from utils.files import file_sha256

FEATURE_CHOICES = FEATURES + ("all",)
SIDES = ("query", "gallery")
# what the authors' run.sh passes to their 3-search.py: the top 1000
AUTHORS_SEARCH_TOPK = 1000


def feature_names(cfg):
    """The features eval.feature stands for (all: every one of FEATURES)."""
    feature = cfg["eval"]["feature"]
    return FEATURES if feature == "all" else (feature,)


def out_dir(cfg, feature):
    """eval.out_dir with {direction} and {feature} filled in (default <output_dir>/eval/{direction}/{feature})."""
    template = cfg["eval"]["out_dir"] or os.path.join(cfg["output_dir"], "eval", "{direction}", "{feature}")
    if len(feature_names(cfg)) > 1 and "{feature}" not in template:
        raise ValueError(f"eval.out_dir={template!r}: eval.feature=all needs a '{{feature}}' in the path")
    return template.format(direction=cfg["eval"]["direction"], feature=feature)


LOCK_NAME = ".eval.lock"


class FolderInUse(RuntimeError):
    """Another evaluation is writing the same output folder."""


@contextlib.contextmanager
def folder_lock(folder):
    """An exclusive flock on `folder`/.eval.lock for the life of the block, which records host, pid and start
    time for the evaluation that finds it taken; where flock is not supported the block runs unlocked."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "a process that wrote no details"
            raise FolderInUse(f"{folder} is in use by another evaluation ({holder}); wait for it to end or set "
                              "another eval.out_dir") from None
        except OSError as e:
            print(f"{path}: flock is not supported here ({e.strerror}): evaluating without a lock", flush=True)
        else:
            os.ftruncate(fd, 0)
            os.write(fd, f"host {socket.gethostname()} pid {os.getpid()} since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        yield
    finally:
        os.close(fd)  # releases the flock; the file stays, so that two evaluations always lock the same file


def lock_outputs(cfg, stack, rank, world_size):
    """Rank 0 locks every output folder of eval.direction (the lock lasts as long as `stack`); every rank
    stops with FolderInUse when one is taken."""
    from utils.distributed import from_rank0

    folders, error = sorted({out_dir(cfg, f) for f in feature_names(cfg)}), None
    if rank == 0:
        try:
            for folder in folders:
                stack.enter_context(folder_lock(folder))
        except FolderInUse as e:
            error = str(e)
    error = from_rank0(error, world_size)
    if error:
        raise FolderInUse(error)


def data_paths(cfg):
    from datasets.annotations import DatasetPaths
    return DatasetPaths.from_config(cfg["data"])


def path_digest(path):
    """file_sha256 of a file; of a folder (a save_pretrained model), the sha256 of its files' names and digests."""
    if not os.path.isdir(path):
        return file_sha256(path)
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(f"{os.path.relpath(full, path)}\0{file_sha256(full)}\n".encode())
    return h.hexdigest()


def model_made_by(cfg):
    """What every feature of a config depends on but the item list: checkpoint contents, model, data settings."""
    checkpoint = cfg["eval"]["checkpoint"]
    data = {k: cfg["data"][k] for k in ("dataset", "image_size", "num_frames", "text_max_len", "frame_source",
                                        "skip_unreadable_eval", "translations", "test_frames", "test_text",
                                        "english_suffix", "english_rule", "preprocess", "roots")}
    data["root"] = os.path.abspath(cfg["data"]["root"])
    data["translations_sha256"] = file_sha256(data["translations"]) if data["translations"] else None
    pretrained = cfg["model"]["backbone"]["pretrained"]
    return {"checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
            "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None,
            # without a checkpoint (train.mode=infer) the family's released weights make the features
            "pretrained_sha256": None if checkpoint or not pretrained else path_digest(pretrained),
            "seed": cfg["seed"], "model": cfg["model"], "data": data}


def features_made_by(cfg, list_path, model_part=None):
    """Everything the features of `list_path` depend on; a feature folder made from anything else is
    computed again (evaluate/extract.py). `model_part`: model_made_by(cfg), when already computed (its
    checkpoint digest reads the whole file)."""
    return dict(model_part or model_made_by(cfg), list=os.path.abspath(list_path), list_sha256=file_sha256(list_path))


def load_eval_model(cfg, device, rank=0):
    """The model of `cfg` with eval.checkpoint's weights (none: the initialisation training would start
    from), on `device`."""
    from models import build_model
    from utils.checkpoint import declared_missing_lines, load_model_weights
    from utils.seed import seed_model_init

    seed_model_init(cfg["seed"])  # an untrained model is the one training would start from
    model = build_model(cfg)
    checkpoint = cfg["eval"]["checkpoint"]
    if checkpoint:
        report = load_model_weights(model, checkpoint, setting="eval.checkpoint")
        if rank == 0:
            for line in declared_missing_lines(report):
                print(f"eval.checkpoint={checkpoint}: {line}", flush=True)
    return model.to(device)


def extract(cfg):
    """Write query and gallery features of eval.direction (every feature of eval.feature) under the lock of
    its output folders; returns the rank."""
    with contextlib.ExitStack() as stack:
        return _extract(cfg, stack)


def _extract(cfg, stack):
    """extract, with the output folders' lock entered on `stack` (held beyond extraction by evaluate_direction)."""
    from datasets import build_eval_dataset, collate_eval
    from datasets.annotations import GALLERY_DOMAIN, QUERY_DOMAIN
    from utils.distributed import init_distributed

    rank, _, world_size, device = init_distributed(cfg["dist_backend"])
    lock_outputs(cfg, stack, rank, world_size)
    if cfg["train"]["threads"]:
        import torch
        torch.set_num_threads(cfg["train"]["threads"])
    model = load_eval_model(cfg, device, rank)
    paths, direction = data_paths(cfg), cfg["eval"]["direction"]
    # the gt file too: a wrong name should stop the run before hours of extraction, not after
    paths.require(*paths.direction_files(direction))
    lists = {"query": (paths.query_list(direction), QUERY_DOMAIN[direction]),
             "gallery": (paths.gallery_list(direction), GALLERY_DOMAIN[direction])}
    model_part = model_made_by(cfg)
    for side, (list_path, domain) in lists.items():
        extract_features(
            model, build_eval_dataset(cfg, list_path, domain),
            {f: os.path.join(out_dir(cfg, f), side) for f in feature_names(cfg)},
            rank=rank, world_size=world_size, device=device, batch_size=cfg["eval"]["batch_size"],
            num_workers=cfg["data"]["num_workers"], dtype=cfg["eval"]["dtype"], collate_fn=collate_eval,
            meta=features_made_by(cfg, list_path, model_part),
            desc=f"{direction} {side}")
    return rank


def search_and_score(query_feats, query_ids, gallery_feats, gallery_ids, gt_path, out_path, topk=SEARCH_KS,
                     direction=None, feature=None, checkpoint=None, search_options=None):
    """Search, score and write `out_path` (results.json) plus ranking.npz (the top lists) beside it.
    `search_options`: evaluate.search.search_gallery's index, block_rows and ivf_pq (default: exact)."""
    from datasets.annotations import parse_gt

    q, qids = load_features(query_feats, query_ids)
    g, gids = load_features(gallery_feats, gallery_ids, mmap=True)
    scores, rows = search_gallery(q, g, max(topk), **(search_options or {}))
    metrics = recall_at_k(qids, rows, gids, parse_gt(gt_path), topk, gt_source=gt_path)
    results = {"direction": direction, "feature": feature, "checkpoint": checkpoint, **metrics,
               "num_gallery": len(gids)}
    out = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out, exist_ok=True)
    # faiss marks a missing neighbour with row -1, which must stay -1 rather than index the last gallery id
    ranked_ids = np.where(rows >= 0, np.asarray(gids, dtype=np.int64)[rows], -1)
    np.savez(os.path.join(out, "ranking.npz"), query_ids=np.asarray(qids, dtype=np.int64),
             gallery_ids=ranked_ids, scores=scores)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    return results


def summary(results):
    """One line of a direction's results: R@K and hit rate at every K, query and gallery counts."""
    ks = list(results["recall"])
    return (f"{results['direction']} {results['feature']}: " +
            "  ".join(f"R@{k} {results['recall'][k]:.2f}" for k in ks) + "  | hit rate " +
            "  ".join(f"@{k} {results['hit_rate'][k]:.2f}" for k in ks) +
            f"  | {results['num_queries']} queries, gallery {results['num_gallery']}" +
            (f", {len(results['no_relevant_in_gallery'])} queries with no relevant item in the gallery (scored 0)"
             if results["no_relevant_in_gallery"] else ""))


def search_direction(cfg):
    """Search + score every extracted feature of eval.direction -> {feature: results}."""
    paths, direction = data_paths(cfg), cfg["eval"]["direction"]
    paths.require(paths.gt_file(direction))
    results = {}
    for feature in feature_names(cfg):
        d = out_dir(cfg, feature)
        q, g = (merged_paths(os.path.join(d, side)) for side in SIDES)
        e = cfg["eval"]
        results[feature] = search_and_score(*q, *g, paths.gt_file(direction), os.path.join(d, "results.json"),
                                            search_ks(e["topk"]), direction, feature, e["checkpoint"],
                                            {k: e[k] for k in ("index", "block_rows", "ivf_pq")})
        print(summary(results[feature]), flush=True)
        print(f"results: {os.path.join(d, 'results.json')}", flush=True)
    return results


def make_page(cfg, feature=None, out=None):
    """The HTML page of sampled queries of eval.direction with their top retrievals; returns its path."""
    from datasets.loader import data_store
    from evaluate.page import build_page, dataset_items

    feature = feature or feature_names(cfg)[0]
    d = out_dir(cfg, feature)
    paths, direction = data_paths(cfg), cfg["eval"]["direction"]
    out = out or os.path.join(d, "page.html")
    paths.require(*paths.direction_files(direction))
    results = None
    if os.path.exists(os.path.join(d, "results.json")):
        with open(os.path.join(d, "results.json"), encoding="utf-8") as f:
            results = json.load(f)
    store = data_store(cfg["data"], paths)
    build_page(os.path.join(d, "ranking.npz"), paths.gt_file(direction),
               dataset_items(paths, paths.query_list(direction), store),
               dataset_items(paths, paths.gallery_list(direction), store),
               out, num_queries=cfg["eval"]["page_queries"], topk=cfg["eval"]["page_topk"], seed=cfg["seed"],
               title=f"{direction} ({feature} feature)", results=results)
    return out


def export_authors(cfg, out=None):
    """Write the features of eval.direction's evaluation run (every feature of eval.feature) as the authors'
    index scripts read them: `query.feat` and `doc.feat` (`pid \\t f1,...`, the unit-length float32 rows the
    project's search ranks with) and `gt.txt` (`query pid \\t gallery pid,...`, plain ids, each once).
    `out`: the folder (default <eval.out_dir>/authors; with several features, <out>/<feature>). Returns the
    folders written."""
    from datasets.annotations import parse_gt

    paths, direction = data_paths(cfg), cfg["eval"]["direction"]
    gt_path = paths.gt_file(direction)
    paths.require(gt_path)
    gt = parse_gt(gt_path)
    folders = []
    for feature in feature_names(cfg):
        d = out_dir(cfg, feature)
        target = os.path.abspath(os.path.join(d, "authors") if out is None else (
            os.path.join(out, feature) if len(feature_names(cfg)) > 1 else out))  # their scripts run elsewhere
        os.makedirs(target, exist_ok=True)
        files = {name: os.path.join(target, name) for name in ("query.feat", "doc.feat", "gt.txt")}
        sources = [merged_paths(os.path.join(d, side)) for side in SIDES]
        for path in (p for pair in sources for p in pair):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no features of this run; run `evaluation.py extract` (or `run`) "
                                        "with the same config first")
        (q, qids), (g, gids) = (load_features(*pair) for pair in sources)
        write_text_features(files["query.feat"], normalize(q), qids)
        write_text_features(files["doc.feat"], normalize(g), gids)
        write_text(files["gt.txt"], "".join(f"{query}\t{','.join(map(str, items))}\n" for query, items in gt.items()))
        res = os.path.join(target, "index")
        print(f"{direction} {feature}: {len(qids)} queries, {len(gids)} gallery items of dimension {g.shape[1]}, "
              f"ground truth of {len(gt)} queries -> {', '.join(files.values())}\n"
              f"  their index scripts, run in their benchmark/evaluate/goods2video/index (the same in "
              f"evaluate/i2i/index):\n"
              f"    python 1-convert_feat.py {files['query.feat']} {files['doc.feat']} {g.shape[1]} {res}\n"
              f"    python 2-create_index.py {res}\n"
              # beyond the gallery's size faiss answers -1, which their 4-analysis.py reads as the last doc
              f"    python 3-search.py {res} {min(AUTHORS_SEARCH_TOPK, len(gids))}\n"
              f"    python 4-analysis.py {res} {files['query.feat']} {files['doc.feat']} {files['gt.txt']}",
              flush=True)
        folders.append(target)
    return folders


def evaluate_direction(cfg):
    """Extract (on every rank) -> search and score -> page (rank 0). Returns {feature: results} on rank 0, else None."""
    from utils.distributed import cleanup

    with contextlib.ExitStack() as stack:  # rank 0 holds the output folders' lock until its page is written
        rank = _extract(cfg, stack)
        cleanup()  # rank 0 searches alone: no collective may wait on it
        if rank != 0:
            return None
        results = search_direction(cfg)
        if cfg["eval"]["page_queries"] > 0:
            print(f"page: {make_page(cfg)}", flush=True)
        return results
