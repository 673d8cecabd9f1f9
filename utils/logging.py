"""Logging for training runs: a logger per process, running meters, TensorBoard on rank 0."""
import json
import logging
import os
import sys

LOGGER_NAME = "qcd"
# the training loop's line every train.log_every steps: in train.log always, on a terminal's stderr only
# when no progress bar is drawn there
STEP_LOGGER = LOGGER_NAME + ".steps"


def progress_bar_shown():
    """The training bar is drawn only on a terminal; a batch job's log gets the step lines instead."""
    return sys.stderr.isatty()


def setup_logger(rank, output_dir=None):
    """Rank 0 logs INFO to stderr and `<output_dir>/train.log`; other ranks only warnings and errors."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if rank == 0 and output_dir:
        os.makedirs(output_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(output_dir, "train.log")))
    handlers[0].addFilter(lambda record: record.name != STEP_LOGGER or not progress_bar_shown())
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    # utils.checkpoint and others log through the root hierarchy; show them with the same format
    logging.basicConfig(level=logger.level, handlers=handlers, force=True)
    return logger


class Meter:
    """Sum and count of a value since the last reset (the window between two log steps)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.sum = 0.0
        self.count = 0

    def update(self, value, n=1):
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self):
        return self.sum / self.count if self.count else float("nan")


class MetricsLog:
    """Rank 0's record of a run: TensorBoard scalars plus one JSON line per log step (metrics.jsonl)."""

    def __init__(self, output_dir, enabled):
        self.enabled = enabled
        self.writer = None
        self.jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(output_dir, "tb"))
            self.jsonl = open(os.path.join(output_dir, "metrics.jsonl"), "a", encoding="utf-8")

    def text(self, tag, text, step):
        if self.enabled:
            self.writer.add_text(tag, text, step)

    def log(self, step, scalars):
        if not self.enabled:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()

    def close(self):
        if self.enabled:
            self.writer.close()
            self.jsonl.close()


def read_metrics(path):
    """{step: record} from a metrics.jsonl; a step logged twice (a resumed run) keeps its last record."""
    records = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                records[rec["step"]] = rec
    return records
