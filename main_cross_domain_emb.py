"""Train the query-driven cross-domain embedding model (QCD) or pre-train (config key `task`), or
hand over to feature extraction.

    python main_cross_domain_emb.py --config configs/qcd_real400k.yaml [key.sub=value ...]
    torchrun --nproc_per_node=8 main_cross_domain_emb.py --config CFG [key=value ...]   (see train.sh)
    python main_cross_domain_emb.py --config CFG --evaluate [eval.checkpoint=...]

One process per GPU (NCCL), or CPU processes (gloo); the training loop is engine.Trainer, the checks
before it engine.checks, the feature extraction evaluate.pipeline.
"""
import argparse
import os
import sys

from engine import train
from engine.checks import checked_config, run_cli, text_warning
from evaluate.pipeline import extract
from utils.distributed import cleanup, exit_process
from utils.preemption import EXIT_PREEMPTED


def evaluate(cfg):
    """Write the query and gallery features of eval.direction (all ranks)."""
    try:
        extract(cfg)
    finally:
        cleanup()
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="YAML experiment config (see configs/)")
    p.add_argument("--evaluate", action="store_true", help="extract the query and gallery features of eval.direction instead of training (evaluation.py scores them)")
    p.add_argument("--check", action="store_true", help="only check the config and the files it names, then exit (the launch scripts run this before torchrun)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return p.parse_args(argv)


def run(args):
    cfg = checked_config(args.config, args.overrides, args.evaluate)
    warning = text_warning(cfg)
    if warning and (args.check or os.environ.get("RANK", "0") == "0"):
        print(warning, file=sys.stderr)
    if args.check:
        return 0
    if args.evaluate:
        return evaluate(cfg)
    # a run stopped by a signal has saved its checkpoint; the exit code tells a job script to requeue it
    return EXIT_PREEMPTED if train(cfg)["preempted"] else 0


def main(argv=None):
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    exit_process(main())
