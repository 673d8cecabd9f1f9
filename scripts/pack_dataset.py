"""Pack the items of a dataset root's list files into LMDB shards for data.format=lmdb (datasets/packed.py).

    python scripts/pack_dataset.py ROOT OUT [--config CFG] [--shard-items 10000] [--resize-short 256]
                                   [--quality 90] [--workers 4]

Packs every goods and video item that the training file and the test lists (query and gallery) name: images,
frames (the frameid lists resolved, the files kept), frameid and text files, into shards of at most
--shard-items items per domain, and writes OUT/manifest.json last. An interrupted pack continues where it
stopped when run again with the same arguments (a shard is written under <name>.partial and renamed once
complete); OUT holding anything else is an error, never overwritten. Unreadable source files are packed as
missing (the loader counts them as with the files) and listed with the list line that names their item.
Then point a run at it: data.format=lmdb data.lmdb_root=OUT, and check it with
`python -m datasets.validate --packed OUT`.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from datasets.annotations import DatasetPaths  # noqa: E402
from datasets.packed import PackError, pack  # noqa: E402

MAX_LISTED = 20  # unreadable files printed; the manifest lists them all


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="data.root: the folder holding the list files and Real400K/ (or Real20M/)")
    p.add_argument("out", help="the packed folder to write (data.lmdb_root)")
    p.add_argument("--config", help="take data.dataset, data.train_file, data.test_files and data.roots from this "
                                    "config (default: the layout of configs/base.yaml)")
    p.add_argument("--dataset", help="sub-folder holding the item folders (default: Real400K or the config's)")
    p.add_argument("--shard-items", type=int, default=10000, help="items per LMDB shard (default 10000)")
    p.add_argument("--resize-short", type=int, default=None,
                   help="re-encode images whose short side is larger to this short side (default: keep the bytes)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images (default 90)")
    p.add_argument("--psnr-size", type=int, default=224,
                   help="side of the squashed images the resize's PSNR is measured on (default 224)")
    p.add_argument("--workers", type=int, default=0, help="worker processes, one shard each at a time (default 0)")
    args = p.parse_args(argv)
    if args.shard_items < 1 or (args.resize_short is not None and args.resize_short < 1) \
            or not 1 <= args.quality <= 100 or args.workers < 0:
        p.error("--shard-items and --resize-short need >= 1, --quality 1..100, --workers >= 0")
    data = {"dataset": "Real400K", "train_file": None, "test_files": None, "roots": None}
    if args.config:
        from utils.config import load_config

        data = load_config(args.config)["data"]
    paths = DatasetPaths(args.root, args.dataset or data["dataset"], data["train_file"], data["test_files"],
                         data["roots"])
    paths.require(paths.train_file)
    try:
        manifest = pack(paths, args.out, shard_items=args.shard_items, resize_short=args.resize_short,
                        quality=args.quality, psnr_size=args.psnr_size, workers=args.workers,
                        log=lambda line: print(line, file=sys.stderr, flush=True))
    except PackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = manifest["counts"]
    print(f"{args.out}: {counts['goods']} goods and {counts['video']} video items in "
          f"{sum(len(s) for s in manifest['shards'].values())} shards; {counts['packed_bytes'] / 1e6:.1f} MB packed "
          f"from {counts['source_bytes'] / 1e6:.1f} MB of source files "
          f"(ratio {counts['packed_bytes'] / max(counts['source_bytes'], 1):.3f})")
    if manifest["resize"]:
        r = manifest["resize"]
        print(f"resized {r['images']} images to a short side of {args.resize_short}: PSNR against the source at "
              f"{args.psnr_size} x {args.psnr_size}, mean {r['psnr_mean_db']:.1f} dB, min {r['psnr_min_db']:.1f} dB")
    missing = manifest["missing"]
    if missing:
        print(f"{len(missing)} unreadable source files, packed as missing (the loader counts them as unreadable):")
        for m in missing[:MAX_LISTED]:
            print(f"  {m['path']}: {m['reason']} (pid {m['pid']}, listed at {m['listed_at']})")
        if len(missing) > MAX_LISTED:
            print(f"  ... and {len(missing) - MAX_LISTED} more, all in {os.path.join(args.out, 'manifest.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
