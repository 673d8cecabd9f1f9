"""Checkpoints: atomic writes, rotation, finding the latest valid one, loading weights.

Files in `output_dir`: `checkpoint_<global_step:08d>.pth.tar` (the last `keep_last` are kept)
and `checkpoint_latest.pth.tar` (the newest). Each file is written to a temporary name
and renamed (`os.replace` is atomic on POSIX), so a process killed mid-write leaves at
worst a `*.tmp` file, never a half-written checkpoint under a real name. Files copied or
cut short by other means are caught when resuming: each candidate is loaded and checked.
"""
import contextlib
import dataclasses
import glob
import logging
import os
import re
import shutil

import torch

LATEST = "checkpoint_latest.pth.tar"
_STEP_RE = re.compile(r"checkpoint_(\d+)\.pth\.tar$")


@dataclasses.dataclass
class TrainingCheckpoint:
    """What a training checkpoint holds: written with `as_dict`, read back with `from_dict`."""
    model: dict          # state dict without DDP's `module.` prefix
    optimizer: dict
    scaler: dict         # GradScaler state ({} when disabled)
    scheduler: dict      # LinearWarmupDecay state (base lrs)
    epoch: int           # the position the run continues from: epoch, batches done in it, optimizer steps in all
    step_in_epoch: int
    global_step: int
    rng: list            # every rank's RNG states, by rank
    config: dict         # the resolved config of the run
    world_size: int
    batch_size: int
    epoch_lengths: list  # batches per epoch with this world size and batch size

    def as_dict(self):
        # not dataclasses.asdict, which deep-copies every tensor
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, state):
        return cls(**{k: state[k] for k in REQUIRED_KEYS})


REQUIRED_KEYS = tuple(f.name for f in dataclasses.fields(TrainingCheckpoint))

log = logging.getLogger(__name__)


def step_path(output_dir, global_step):
    return os.path.join(output_dir, f"checkpoint_{global_step:08d}.pth.tar")


def strip_module_prefix(state_dict):
    """State dict keys without DDP's `module.` prefix."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def unwrap(model):
    return model.module if hasattr(model, "module") else model


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota, ...); its partial file has been removed."""


@contextlib.contextmanager
def _partial_removed(tmp, what):
    """Around the writing of `tmp`: an OSError (full disk, quota, ...) removes the partial file and
    becomes a CheckpointWriteError saying `what` was being done."""
    try:
        yield
    except OSError as e:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise CheckpointWriteError(e.errno, f"{e.strerror or e} while {what}; the partial file was removed and the "
                                            "checkpoints written before it are kept") from None


def write_atomic(obj, path):
    """torch.save `obj` to `path` through a temporary file replaced at the end: `path` is the old file or
    the whole new one, never a part."""
    tmp = path + ".tmp"
    # through a Python file, so that a full disk raises OSError(ENOSPC) rather than torch's basic_ios::clear
    with _partial_removed(tmp, f"writing {path}"), open(tmp, "wb") as f:
        torch.save(obj, f)
    os.replace(tmp, path)


def _link_or_copy(src, dst):
    tmp = dst + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        with _partial_removed(tmp, f"copying {src} to {dst}"):
            shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def step_checkpoints(output_dir):
    """[(global_step, path)] of the step checkpoints in output_dir, oldest first."""
    found = []
    for path in glob.glob(os.path.join(output_dir, "checkpoint_*.pth.tar")):
        m = _STEP_RE.search(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def save_checkpoint(state, output_dir, keep_last):
    """Write `state` (a TrainingCheckpoint or its dict) as the checkpoint of its global step, point
    `latest` at it, drop old ones."""
    if isinstance(state, TrainingCheckpoint):
        state = state.as_dict()
    os.makedirs(output_dir, exist_ok=True)
    path = step_path(output_dir, state["global_step"])
    write_atomic(state, path)
    _link_or_copy(path, os.path.join(output_dir, LATEST))
    for _, old in step_checkpoints(output_dir)[:-keep_last]:
        os.remove(old)
    return path


def set_aside_later_checkpoints(output_dir, global_step):
    """Rename the step checkpoints numbered above `global_step` to `<name>.superseded`; returns the new names.

    A run starting at `global_step` (resumed from an older checkpoint, or renumbered because it
    continues with more processes or a larger batch) would otherwise leave them ahead of its own
    checkpoints: rotation would delete the new files first and resume=auto would go back to them.
    """
    moved = []
    for step, path in step_checkpoints(output_dir):
        if step > global_step:
            dst, n = path + ".superseded", 1
            while os.path.exists(dst):
                dst, n = f"{path}.superseded{n}", n + 1
            os.replace(path, dst)
            moved.append(dst)
    return moved


def load_checkpoint(path):
    """torch.load(path, weights_only=True) on the CPU. Every file this project reads (its own checkpoints,
    cn_clip's releases, the authors' checkpoint) holds only tensors and plain values, so no pickled code is
    ever run; read_torch_file adds errors that name the setting."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _check(path):
    state = load_checkpoint(path)
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"missing keys {missing}")
    return state


def resume_candidates(output_dir):
    """The checkpoints resume=auto tries, in its order: the step checkpoints newest first, then LATEST."""
    candidates = [p for _, p in reversed(step_checkpoints(output_dir))]
    latest = os.path.join(output_dir, LATEST)
    if os.path.exists(latest):
        candidates.append(latest)
    return candidates


def find_latest_valid(output_dir):
    """(path, state) of the newest checkpoint in output_dir that loads completely, or (None, None)."""
    for path in resume_candidates(output_dir):
        try:
            return path, _check(path)
        except Exception as e:  # a truncated zip raises RuntimeError, a foreign file anything
            log.warning("skipping unreadable checkpoint %s: %s", path, str(e).splitlines()[0] if str(e) else type(e).__name__)
    return None, None


def resolve_resume(resume, output_dir):
    """(path, state) to resume from: `auto` = latest valid in output_dir (None if there is none), or a path."""
    if resume is None:
        return None, None
    if resume == "auto":
        return find_latest_valid(output_dir)
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"resume: checkpoint not found: {resume}")
    try:
        return resume, _check(resume)
    except Exception as e:
        raise RuntimeError(f"resume: {resume} is not a readable training checkpoint ({e})") from None


# init_from must fill at least this share of the model's tensors (unless init_strict=false)
MIN_INIT_SHARE = 0.5


class WeightsMismatch(ValueError):
    """A checkpoint that does not fit the model it is to initialise."""


def state_dict_of(obj, keys=("model", "state_dict")):
    """The tensors of a loaded checkpoint: obj[key] for the first of `keys` holding a mapping (else obj
    itself), without DDP's `module.` prefix; None when that is not a mapping of tensors."""
    for key in keys:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        return None
    return strip_module_prefix(obj)


def _model_state(obj, path):
    state = state_dict_of(obj)
    if state is None:
        raise ValueError(f"{path}: expected a checkpoint with a 'model' or 'state_dict' mapping of tensors")
    return state


class CheckpointFileError(ValueError):
    """A file given as a checkpoint that torch cannot read as one."""


def read_torch_file(path, expected, setting="checkpoint"):
    """load_checkpoint(path), its failures naming `setting`, the path and what was `expected`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{setting}: checkpoint file not found: {path}")
    try:
        return load_checkpoint(path)
    except Exception as e:  # a text file, a truncated zip, a pickle of foreign objects ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointFileError(f"{setting}={path}: not a PyTorch checkpoint (expected {expected}): {reason}") \
            from None


def _read_state(path, setting):
    return _model_state(read_torch_file(path, "a file written by torch.save holding a 'model' or 'state_dict' "
                                              "mapping of tensors", setting), path)


def _match(model, state):
    own = model.state_dict()
    mismatched = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    matching = {k: v for k, v in state.items() if k in own and k not in mismatched}
    return matching, {
        "loaded": sorted(matching),
        "missing": sorted(k for k in own if k not in matching),
        "unexpected": sorted(k for k in state if k not in own),
        "mismatched": [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched],
    }


# key of a converted checkpoint (scripts/convert_authors_checkpoint.py): {model key: why the source has no
# counterpart}; exactly those tensors may be missing when the checkpoint is evaluated
NO_COUNTERPART = "no_counterpart"


def load_model_weights(model, path, strict=True, state=None, setting="checkpoint"):
    """Load the model weights of a checkpoint (ours, or any file with a `state_dict`) into `model`;
    `state`: that file's model state dict when it is already in memory; `setting` names the path in errors.

    strict=True: every parameter must be present with the same shape, else a WeightsMismatch that
    counts and names the first differences; only the tensors the file declares under NO_COUNTERPART
    may be absent (they keep the model's initialisation). strict=False: load what matches. Returns a
    report {"loaded", "missing", "unexpected", "mismatched", "declared_missing" ({key: reason})}.
    """
    model = unwrap(model)
    declared = {}
    if state is None:
        obj = read_torch_file(path, "a file written by torch.save holding a 'model' or 'state_dict' mapping of "
                                    "tensors", setting)
        if isinstance(obj, dict) and isinstance(obj.get(NO_COUNTERPART), dict):
            declared = obj[NO_COUNTERPART]
        state = _model_state(obj, path)
    else:
        state = _model_state(state, path)
    matching, report = _match(model, state)
    report["declared_missing"] = {k: declared[k] for k in report["missing"] if k in declared and k not in state}
    if strict and (len(report["missing"]) > len(report["declared_missing"]) or report["unexpected"]
                   or report["mismatched"]):
        wrong_shape = {m.split(":")[0] for m in report["mismatched"]}
        found = {"missing": [k for k in report["missing"] if k not in wrong_shape and k not in report["declared_missing"]],
                 "unexpected": report["unexpected"], "mismatched": report["mismatched"]}
        parts = [f"{len(keys)} {name} (first: {', '.join(keys[:3])})" for name, keys in found.items() if keys]
        raise WeightsMismatch(f"{path} does not fit the model of this config: {'; '.join(parts)}")
    model.load_state_dict(matching, strict=False)
    return report


def declared_missing_lines(report):
    """One line per reason of report["declared_missing"]: the count, the key groups, the reason."""
    by_reason = {}
    for key, reason in report["declared_missing"].items():
        by_reason.setdefault(reason, []).append(key)
    lines = []
    for reason, keys in by_reason.items():
        groups = sorted({".".join(k.split(".")[:2]) for k in keys})
        lines.append(f"{len(keys)} tensors without a counterpart, kept at this model's initialisation "
                     f"({', '.join(groups)}): {reason}")
    return lines


def load_init_weights(model, path, strict=True, show=10):
    """init_from: load the tensors of `path` that fit `model`. Fewer than MIN_INIT_SHARE of the model's
    tensors (e.g. another architecture, or a prefix that does not match) is a WeightsMismatch listing
    the first `show` unmatched keys; with strict=False it is only reported (report["problem"]).
    Nothing is loaded before the check passes."""
    model = unwrap(model)
    matching, report = _match(model, _read_state(path, "init_from"))
    total = len(report["loaded"]) + len(report["missing"])
    report["problem"] = None
    if len(matching) < MIN_INIT_SHARE * total:
        parts = [f"{len(matching)} of the model's {total} tensors found (at least {MIN_INIT_SHARE:.0%} expected)",
                 f"first unmatched model keys ({len(report['missing'])} in all): {report['missing'][:show]}"]
        if report["unexpected"]:
            parts.append(f"first checkpoint keys the model lacks ({len(report['unexpected'])} in all): "
                         f"{report['unexpected'][:show]}")
        if report["mismatched"]:
            parts.append(f"shape mismatches ({len(report['mismatched'])}): {report['mismatched'][:show]}")
        report["problem"] = f"init_from={path}: " + "; ".join(parts)
        if strict:
            raise WeightsMismatch(report["problem"] + ". Set init_strict=false to load what matches anyway")
    model.load_state_dict(matching, strict=False)
    return report
