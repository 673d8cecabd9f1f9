"""Evaluation of cross-domain retrieval: features to disk, faiss search, R@K, the paper's table, a result page.

    torchrun ... evaluation.py run     --config CFG [key=value ...]   extract + search (+ page) for eval.direction
    torchrun ... evaluation.py extract --config CFG [key=value ...]   query and gallery features only
    python evaluation.py search --query-feats Q.npy --query-ids Q.txt --gallery-feats G.npy --gallery-ids G.txt
                                --gt GT.txt --out results.json [--topk 100] [--direction D] [--feature F] [--checkpoint C]
    python evaluation.py table V2G.json G2V.json [--name ROW] [--out-dir DIR] [--k 1,5,10] [--paper]
    python evaluation.py page --config CFG [key=value ...] [--out page.html]
    python evaluation.py export --format authors --config CFG [key=value ...] [--out-dir DIR]
    python evaluation.py retrieve CKPT --gallery FEATURES_DIR (--query TEXT | --item IMG[,IMG...] --text TEXT)
                                [--config CFG] [--topk 10] [--feature F] [key=value ...]

Feature files: `.npy` + ids file (one id per line), or the authors' text format
`pid \\t f1,f2,...` (give it as --query-feats/--gallery-feats without ids; the per-rank files of
their evaluation concatenated, padding repeats dropped). `export --format authors` writes a run's
features and ground truth for the authors' index scripts. `eval.feature=all` extracts the fused,
visual and text features in one pass and scores each. `retrieve` encodes one text query or one item
with a checkpoint's model (evaluate/retrieve.py) and prints the ids and cosine scores of its top gallery
items, one per line, best first.
"""
import argparse

from datasets.annotations import DIRECTIONS
from evaluate import pipeline
from evaluate.extract import FEATURES
from evaluate.features import REPEAT_ATOL
from evaluate.metrics import PAPER_KS, SEARCH_KS
from evaluate.table import (checkpoint_of, load_results, paper_row, parse_ks, print_paper, print_rows, table_row,
                            write_row)


def _ks(text):
    try:
        return parse_ks(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _config(args):
    from engine.checks import checked_config
    return checked_config(args.config, args.overrides, evaluate=True)


def retrieve(parser, args):
    from engine.checks import validate_config
    from evaluate.retrieve import Retriever, gallery_feature, retrieval_config

    if args.item is not None and args.text is None and args.text_file is None:
        parser.error("retrieve --item needs --text (the item's text; --text '' for none) or --text-file")
    if args.text is not None and args.text_file is not None:
        parser.error("retrieve takes --text or --text-file, not both")
    if args.query is not None and (args.text is not None or args.text_file is not None or args.feature is not None):
        parser.error("retrieve --query takes no --text, --text-file or --feature")
    feature = args.feature or gallery_feature(args.gallery)
    if args.item is not None and feature is None:
        parser.error(f"--gallery {args.gallery} is not a <feature>/gallery folder: give --feature")
    cfg = retrieval_config(args.checkpoint, args.config, args.overrides)
    validate_config(cfg, evaluate=True)
    retriever = Retriever(cfg)
    if args.query is not None:
        vector = retriever.encode_query(args.query)
    else:
        vector = retriever.encode_item(args.item.split(","), args.text, text_file=args.text_file)[feature]
    for pid, score in retriever.search(args.gallery, vector, args.topk):
        print(f"{pid}\t{score:.6f}")


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
    p.add_argument("--topk", type=int, default=max(SEARCH_KS),
                   help=f"largest K; R@K is reported for {', '.join(map(str, SEARCH_KS))} up to it and at it")
    p.add_argument("--direction", choices=DIRECTIONS, help="recorded in results.json")
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
    p.add_argument("--k", type=_ks, default=PAPER_KS, metavar="K,K,...",
                   help=f"the K of the columns (default {','.join(map(str, PAPER_KS))}, the paper's); each must be "
                        "in both results files; results.md and results.csv of --out-dir hold one set of K")
    p.add_argument("--paper", action="store_true",
                   help="also print the paper's row of the same name under ours (or that the paper has none) and "
                        "the paper's Tables 2-4")
    text = "the top gallery items of one text query or one item (its images and text) for a trained model"
    p = sub.add_parser("retrieve", help=text, description=(
        f"{text}: prints `id<TAB>cosine score` lines, best first. The model and its preprocessing come from "
        "the checkpoint (the config its training run stored, or --config), the gallery from a features folder "
        "written by `evaluation.py extract` (e.g. <eval.out_dir>/gallery), which must have been made by the "
        "same checkpoint. An item is encoded as the evaluation encodes its list's items: one image is a goods "
        "item, several are a micro-video's frames (data.num_frames of them picked by data.test_frames)."))
    p.add_argument("checkpoint", help="checkpoint of the model (a training run's checkpoint_latest.pth.tar)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.add_argument("--gallery", required=True, help="features folder (feats.npy, ids.txt, meta.json)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--query", help="a text query, encoded by the query tower")
    what.add_argument("--item", help="the item's image files, comma-separated (a micro-video's frames in order)")
    p.add_argument("--text", help="with --item: the item's text as the model reads it (a goods title, a video's "
                                  "title|text|caption)")
    p.add_argument("--text-file", help="with --item: the item's text file in the dataset's layout, read as the "
                                       "evaluation reads it (data.test_text, data.translations)")
    p.add_argument("--feature", choices=FEATURES, help="with --item: the item feature to search with (default: "
                                                       "the gallery's, from its <feature>/gallery path)")
    p.add_argument("--config", help="YAML config of the model, for a checkpoint that stores none")
    p.add_argument("--topk", type=int, default=10, help="number of gallery items printed")
    args, extra = parser.parse_known_args(argv)
    # retrieve's overrides may follow its options (argparse gives positionals after options back unparsed)
    if extra and not (args.command == "retrieve" and all("=" in e and not e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "retrieve":
        args.overrides += extra

    if args.command == "run":
        pipeline.evaluate_direction(_config(args))
    elif args.command == "extract":
        from utils.distributed import cleanup
        pipeline.extract(_config(args))
        cleanup()
    elif args.command == "page":
        print(pipeline.make_page(_config(args), out=args.out))
    elif args.command == "search":
        ks = [k for k in SEARCH_KS if k < args.topk] + [args.topk]
        print(pipeline.summary(pipeline.search_and_score(
            args.query_feats, args.query_ids, args.gallery_feats, args.gallery_ids, args.gt, args.out, ks,
            args.direction, args.feature, args.checkpoint)))
    elif args.command == "export":
        pipeline.export_authors(_config(args), args.out_dir)
    elif args.command == "table":
        ks = args.k
        v2g, g2v = load_results(args.v2g, "video2goods", ks), load_results(args.g2v, "goods2video", ks)
        values = table_row(v2g, g2v, ks)
        # saved first: `| head` may cut the output
        write_row(args.name, values, args.out_dir, checkpoint_of(v2g, g2v), ks)
        print_rows([(args.name, values)] + ([paper_row(args.name, ks)] if args.paper else []), ks)
        if args.paper:
            print_paper()
    elif args.command == "retrieve":
        retrieve(parser, args)
    return 0


if __name__ == "__main__":
    from engine.checks import run_cli
    from utils.distributed import exit_process

    exit_process(run_cli(main))
