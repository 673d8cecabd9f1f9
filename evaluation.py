"""Evaluation of cross-domain retrieval: features to disk, faiss search, R@K, the paper's table, a result page.

    torchrun ... evaluation.py run     --config CFG [key=value ...]   extract + search (+ page) for eval.direction
    torchrun ... evaluation.py extract --config CFG [key=value ...]   query and gallery features only
    python evaluation.py search --query-feats Q.npy --query-ids Q.txt --gallery-feats G.npy --gallery-ids G.txt
                                --gt GT.txt --out results.json [--topk 100] [--direction D] [--feature F] [--checkpoint C]
    python evaluation.py table V2G.json G2V.json [--name ROW] [--out-dir DIR]
    python evaluation.py page --config CFG [key=value ...] [--out page.html]
    python evaluation.py export --format authors --config CFG [key=value ...] [--out-dir DIR]

Feature files: `.npy` + ids file (one id per line), or the authors' text format
`pid \\t f1,f2,...` (give it as --query-feats/--gallery-feats without ids; the per-rank files of
their evaluation concatenated, padding repeats dropped). `export --format authors` writes a run's
features and ground truth for the authors' index scripts. `eval.feature=all` extracts the fused,
visual and text features in one pass and scores each.
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np

from evaluate.extract import FEATURES, extract_features, merged_paths
from evaluate.features import REPEAT_ATOL, NonFiniteFeatures, load_features, write_text, write_text_features
from evaluate.metrics import recall_at_k
from evaluate.search import normalize, search_gallery
from evaluate.table import checkpoint_of, load_results, print_paper, print_rows, table_row, write_row

SIDES = ("query", "gallery")


def feature_names(cfg):
    feature = cfg["eval"]["feature"]
    if feature == "all":
        return FEATURES
    if feature not in FEATURES:
        raise ValueError(f"eval.feature={feature!r}: expected one of {', '.join(FEATURES)} or all")
    return (feature,)


def out_dir(cfg, feature):
    """eval.out_dir with {direction} and {feature} filled in (default <output_dir>/eval/{direction}/{feature})."""
    template = cfg["eval"]["out_dir"] or os.path.join(cfg["output_dir"], "eval", "{direction}", "{feature}")
    if len(feature_names(cfg)) > 1 and "{feature}" not in template:
        raise ValueError(f"eval.out_dir={template!r}: eval.feature=all needs a '{{feature}}' in the path")
    return template.format(direction=cfg["eval"]["direction"], feature=feature)


def data_paths(cfg):
    from datasets.annotations import DatasetPaths
    return DatasetPaths.from_config(cfg["data"])


def file_digest(path):
    """sha256 of a file's contents (a retrained checkpoint_latest or an edited list under the same name)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def path_digest(path):
    """file_digest of a file; of a folder (a save_pretrained model), the sha256 of its files' names and digests."""
    if not os.path.isdir(path):
        return file_digest(path)
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(f"{os.path.relpath(full, path)}\0{file_digest(full)}\n".encode())
    return h.hexdigest()


def model_made_by(cfg):
    """What every feature of a config depends on but the item list: checkpoint contents, model, data settings."""
    checkpoint = cfg["eval"]["checkpoint"]
    data = {k: cfg["data"][k] for k in ("dataset", "image_size", "num_frames", "text_max_len", "frame_source",
                                        "skip_unreadable_eval", "translations", "test_frames", "test_text",
                                        "english_suffix", "english_rule", "preprocess", "roots")}
    data["root"] = os.path.abspath(cfg["data"]["root"])
    data["translations_sha256"] = file_digest(data["translations"]) if data["translations"] else None
    pretrained = cfg["model"]["backbone"]["pretrained"]
    return {"checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
            "checkpoint_sha256": file_digest(checkpoint) if checkpoint else None,
            # without a checkpoint (train.mode=infer) the family's released weights make the features
            "pretrained_sha256": None if checkpoint or not pretrained else path_digest(pretrained),
            "seed": cfg["seed"], "model": cfg["model"], "data": data}


def features_made_by(cfg, list_path, model_part=None):
    """Everything the features of `list_path` depend on; a feature folder made from anything else is
    computed again (evaluate/extract.py). `model_part`: model_made_by(cfg), when already computed (its
    checkpoint digest reads the whole file)."""
    return dict(model_part or model_made_by(cfg), list=os.path.abspath(list_path), list_sha256=file_digest(list_path))


def extract(cfg):
    """Write query and gallery features of eval.direction (every feature of eval.feature); returns the rank."""
    from datasets import build_eval_dataset, collate_eval
    from models import build_model
    from utils.checkpoint import declared_missing_lines, load_model_weights
    from utils.distributed import init_distributed
    from utils.seed import seed_model_init

    rank, _, world_size, device = init_distributed(cfg)
    if cfg["train"]["threads"]:
        import torch
        torch.set_num_threads(cfg["train"]["threads"])
    seed_model_init(cfg["seed"])  # an untrained model is the one training would start from
    model = build_model(cfg)
    checkpoint = cfg["eval"]["checkpoint"]
    if checkpoint:
        report = load_model_weights(model, checkpoint, setting="eval.checkpoint")
        if rank == 0:
            for line in declared_missing_lines(report):
                print(f"eval.checkpoint={checkpoint}: {line}", flush=True)
    model.to(device)
    paths, direction = data_paths(cfg), cfg["eval"]["direction"]
    # the gt file too: a wrong name should stop the run before hours of extraction, not after
    paths.require(*paths.direction_files(direction))
    from datasets.annotations import GALLERY_DOMAIN, QUERY_DOMAIN
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


def search_and_score(query_feats, query_ids, gallery_feats, gallery_ids, gt_path, out_path, topk=(10, 20, 50, 100),
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
                                            e["topk"], direction, feature, e["checkpoint"],
                                            {k: e[k] for k in ("index", "block_rows", "ivf_pq")})
        print(summary(results[feature]), flush=True)
        print(f"results: {os.path.join(d, 'results.json')}", flush=True)
    return results


def make_page(cfg, feature=None, out=None):
    """The HTML page of sampled queries of eval.direction with their top retrievals; returns its path."""
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
    build_page(os.path.join(d, "ranking.npz"), paths.gt_file(direction),
               dataset_items(paths, paths.query_list(direction)), dataset_items(paths, paths.gallery_list(direction)),
               out, num_queries=cfg["eval"]["page_queries"], topk=cfg["eval"]["page_topk"], seed=cfg["seed"],
               title=f"{direction} ({feature} feature)", results=results)
    return out


# what the authors' run.sh passes to their 3-search.py: the top 1000
AUTHORS_SEARCH_TOPK = 1000


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

    rank = extract(cfg)
    cleanup()  # rank 0 searches alone: no collective may wait on it
    if rank != 0:
        return None
    results = search_direction(cfg)
    if cfg["eval"]["page_queries"] > 0:
        print(f"page: {make_page(cfg)}", flush=True)
    return results


def _config(args):
    from main_cross_domain_emb import preflight, validate_config
    from utils.config import load_config

    cfg = load_config(args.config, args.overrides)
    validate_config(cfg, evaluate=True)
    preflight(cfg, evaluate=True)
    return cfg


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {"run": "extract the query and gallery features of eval.direction (all ranks), then search, score and "
                    "draw the result page (rank 0)",
             "extract": "only write the query and gallery features of eval.direction to eval.out_dir",
             "page": "draw the HTML page of sampled queries and their top retrievals from a finished search"}
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", required=True, help="YAML experiment config (see configs/)")
        p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
        if name == "page":
            p.add_argument("--out", help="HTML file (default <eval.out_dir>/page.html)")
    text = "search and score feature files that are already on disk (ours or the authors' text format)"
    formats = ("Each feature file is told apart by its contents: a NumPy .npy file (ours, with its ids file) or "
               "else the authors' text format, one item a line, `pid<TAB>f1,f2,...` (their evaluation's per-rank "
               "files, concatenated with cat as their scripts do). Their ranks are padded with repeats of the "
               f"first items: a line whose id came before with the same values (within {REPEAT_ATOL:g}) is dropped "
               "and the drops are counted and printed; an id repeated with other values, a line without exactly 2 "
               "tab-separated fields, a value that is not a finite float and a row of another length than the "
               "first are errors naming the file and line.")
    p = sub.add_parser("search", help=text, description=f"{text}. {formats}")
    p.add_argument("--query-feats", required=True, help="query features: .npy (with --query-ids) or the text format")
    p.add_argument("--query-ids", help="ids of --query-feats (not needed for the text format)")
    p.add_argument("--gallery-feats", required=True, help="gallery features, as --query-feats")
    p.add_argument("--gallery-ids", help="ids of --gallery-feats")
    p.add_argument("--gt", required=True, help="ground truth: query id, then its relevant gallery ids, per line")
    p.add_argument("--out", required=True, help="results.json (ranking.npz is written beside it)")
    p.add_argument("--topk", type=int, default=100, help="largest K; R@K is reported for 10, 20, 50, 100 up to it")
    p.add_argument("--direction", choices=("video2goods", "goods2video"), help="recorded in results.json")
    p.add_argument("--feature", help="feature name recorded in results.json")
    p.add_argument("--checkpoint", help="checkpoint recorded in results.json")
    text = "write the features of an evaluation run (eval.direction, eval.feature) for another tool to read"
    p = sub.add_parser("export", help=text, description=(
        f"{text}. --format authors: the authors' index scripts (1-convert_feat.py ... 4-analysis.py of their "
        "benchmark/evaluate/*/index): query.feat and doc.feat hold `pid<TAB>f1,f2,...` lines of the unit-length "
        "float32 features this project's search ranks with, gt.txt the ground truth as `query pid<TAB>gallery "
        "pid,...` with plain ids, each once (their analysis compares ids as text). The command prints the "
        "four script calls; 3-search.py gets a top K of at most the gallery's size, since faiss answers -1 "
        "beyond it and their analysis reads -1 as the last doc."))
    p.add_argument("--format", required=True, choices=("authors",), help="the layout written")
    p.add_argument("--config", required=True, help="YAML config of the evaluation run (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.add_argument("--out-dir", help="folder written (default <eval.out_dir>/authors; with eval.feature=all, "
                                     "one folder per feature under it)")
    text = "the paper's row (Video2goods, Goods2video, Overall, Mean) from the two directions' results.json"
    p = sub.add_parser("table", help=text, description=text)
    p.add_argument("v2g", help="results.json of video2goods")
    p.add_argument("g2v", help="results.json of goods2video")
    p.add_argument("--name", default="model", help="row name; a row of that name in the files is replaced")
    p.add_argument("--out-dir", default=".", help="folder of results.md and results.csv")
    p.add_argument("--paper", action="store_true", help="also print the paper's rows of Tables 2-4")
    args = parser.parse_args(argv)

    if args.command == "run":
        evaluate_direction(_config(args))
    elif args.command == "extract":
        from utils.distributed import cleanup
        extract(_config(args))
        cleanup()
    elif args.command == "page":
        print(make_page(_config(args), out=args.out))
    elif args.command == "search":
        ks = [k for k in (10, 20, 50, 100) if k < args.topk] + [args.topk]
        print(summary(search_and_score(args.query_feats, args.query_ids, args.gallery_feats, args.gallery_ids,
                                       args.gt, args.out, ks, args.direction, args.feature, args.checkpoint)))
    elif args.command == "export":
        export_authors(_config(args), args.out_dir)
    elif args.command == "table":
        v2g, g2v = load_results(args.v2g, "video2goods"), load_results(args.g2v, "goods2video")
        values = table_row(v2g, g2v)
        write_row(args.name, values, args.out_dir, checkpoint_of(v2g, g2v))  # saved first: `| head` may cut the output
        print_rows([(args.name, values)])
        if args.paper:
            print_paper()
    return 0


if __name__ == "__main__":
    from datasets.annotations import AnnotationError
    from utils.checkpoint import CheckpointFileError, WeightsMismatch
    from utils.config import ConfigError
    from utils.distributed import UnsupportedGPU

    try:
        sys.exit(main())
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    except (UnsupportedGPU, FileNotFoundError, NonFiniteFeatures, CheckpointFileError, WeightsMismatch,
            AnnotationError) as e:
        sys.exit(f"error: {e}")
