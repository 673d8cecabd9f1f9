"""Train the query-driven cross-domain embedding model (QCD), or hand over to feature extraction.

    python main_cross_domain_emb.py --config configs/qcd_real400k.yaml [key.sub=value ...]
    torchrun --nproc_per_node=8 main_cross_domain_emb.py --config CFG [key=value ...]   (see train.sh)
    python main_cross_domain_emb.py --config CFG --evaluate [eval.checkpoint=...]

One process per GPU (NCCL), or CPU processes (gloo). The learning rate is a pure function of
the global step, checkpoints hold everything needed to continue the run exactly (model,
optimizer, GradScaler, scheduler, data position, per-rank RNG states), and `resume=auto`
continues from the newest checkpoint in output_dir that loads.
"""
import argparse
import contextlib
import logging
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from utils import checkpoint as ckpt
from utils.config import ConfigError, load_config, save_config
from utils.distributed import UnsupportedGPU, amp_error, barrier, cleanup, init_distributed
from utils.logging import Meter, MetricsLog, setup_logger
from utils.schedule import WARMUP_WARN_SHARE, LinearWarmupDecay
from utils.seed import get_rng_state, seed_data, seed_model_init, set_rng_state

log = logging.getLogger("qcd")

# allowed values of each enumerated setting; for a list setting, of each of its elements
CHOICES = {
    ("dist_backend",): ("auto", "nccl", "gloo"),
    ("data", "frame_source"): ("images", "raw"),
    ("model", "backbone", "freeze"): ("visual", "text"),
    ("model", "video", "pooling"): ("add", "mean", "lstm", "ftt"),
    ("model", "fusion", "type"): ("add", "combiner", "fusion"),
    ("loss", "negatives"): ("local", "global"),
    ("train", "optimizer"): ("adam", "adamw"),
    ("train", "amp"): ("bf16", "fp16", "none"),
    ("eval", "feature"): ("fused", "visual", "text", "all"),
    ("eval", "dtype"): ("float16", "float32"),
    ("eval", "direction"): ("video2goods", "goods2video"),
}


class NonFiniteLoss(RuntimeError):
    pass


# ----------------------------------------------------------------------------- config


def validate_config(cfg):
    """Reject values the training loop cannot run with, before any work is done."""
    for path, allowed in CHOICES.items():
        value = cfg
        for p in path:
            value = value[p]
        if isinstance(value, list):
            if not set(value) <= set(allowed):
                raise ConfigError(f"{'.'.join(path)}={value!r}: expected a list of any of {list(allowed)}")
        elif value not in allowed:
            raise ConfigError(f"{'.'.join(path)}={value!r}: expected one of {list(allowed)}")
    ratio = cfg["model"]["recon"]["vision_mask_ratio"]
    if not 0 < ratio <= 1:
        raise ConfigError(f"model.recon.vision_mask_ratio={ratio!r}: expected a value in (0, 1]")
    t = cfg["train"]
    for key in ("epochs", "batch_size", "save_every_steps", "keep_last", "log_every"):
        if t[key] is None or t[key] < 1:
            raise ConfigError(f"train.{key}={t[key]!r}: expected an integer >= 1")
    for key in ("max_steps", "threads"):
        if t[key] is not None and t[key] < 1:
            raise ConfigError(f"train.{key}={t[key]!r}: expected null or an integer >= 1")
    if not 0 <= t["warmup_ratio"] < 1:
        raise ConfigError(f"train.warmup_ratio={t['warmup_ratio']!r}: expected a share of the run in [0, 1)")
    for key in ("lr", "lr_visual", "lr_recon"):
        if not t[key] >= 0:
            raise ConfigError(f"train.{key}={t[key]!r}: expected a learning rate >= 0")
    if not t["grad_clip"] >= 0:
        raise ConfigError(f"train.grad_clip={t['grad_clip']!r}: expected 0 (off) or a norm > 0")
    if not cfg["output_dir"]:
        raise ConfigError("output_dir is empty: expected a folder for checkpoints and logs")
    if cfg["resume"] not in (None, "auto") and not os.path.isfile(cfg["resume"]):
        raise ConfigError(f"resume={cfg['resume']!r}: expected null, auto or an existing checkpoint file")
    if cfg["init_from"] is not None and not os.path.isfile(cfg["init_from"]):
        raise ConfigError(f"init_from={cfg['init_from']!r}: checkpoint file not found")


# ----------------------------------------------------------------------------- optimisation


def build_optimizer(cfg, model):
    """Adam/AdamW over the model's named parameter groups (visual / recon / other), each with its own lr."""
    t = cfg["train"]
    cls = torch.optim.AdamW if t["optimizer"] == "adamw" else torch.optim.Adam
    return cls(model.param_groups(cfg), lr=t["lr"], weight_decay=t["weight_decay"])


def _flatten(cfg, prefix=""):
    for k, v in cfg.items():
        if isinstance(v, dict) and v:
            yield from _flatten(v, prefix + k + ".")
        else:
            yield prefix + k, v


# keys that may change between a run and its continuation without changing the run
RESUME_FREE_KEYS = {"resume", "output_dir", "config_path", "train.max_steps", "train.log_every", "train.threads",
                    "train.save_every_steps", "train.keep_last", "data.num_workers"}


def config_changes(old, new):
    """'key: old -> new' for each setting that differs between a checkpoint's config and this run's."""
    a, b = dict(_flatten(old)), dict(_flatten(new))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and k not in RESUME_FREE_KEYS]


def _group_name(group, i):
    return group.get("name", f"group{i}")


# ----------------------------------------------------------------------------- data


def to_device(batch, device):
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


# ----------------------------------------------------------------------------- training


def _reduce_terms(terms, world_size):
    """Mean of each loss term over ranks (also makes a NaN on one rank visible to all)."""
    names = sorted(terms)
    values = torch.stack([terms[k].detach().float().reshape(()) for k in names])
    if world_size > 1:
        dist.all_reduce(values)
        values /= world_size
    return dict(zip(names, values.tolist()))


def check_finite(terms, global_step, last_checkpoint):
    # the weighted total last, so that the message names the term that went wrong
    for name, value in sorted(terms.items(), key=lambda kv: (kv[0] == "loss", kv[0])):
        if not math.isfinite(value):
            raise NonFiniteLoss(
                f"non-finite {name} = {value} at step {global_step}; stopping. "
                f"Last good checkpoint: {last_checkpoint or 'none written in this run'}")


def _gather_rng(world_size):
    state = get_rng_state()
    if world_size == 1:
        return [state]
    states = [None] * world_size
    dist.all_gather_object(states, state)
    return states


def _startup_report(cfg, world_size, epoch_lengths, scheduler, optimizer, device):
    t = cfg["train"]
    global_batch = t["batch_size"] * world_size
    negatives = (global_batch if cfg["loss"]["negatives"] == "global" else t["batch_size"]) - 1
    log.info("world size %d, device %s, amp %s, torch threads %d", world_size, device,
             t["amp"] if device.type == "cuda" else "none (CPU)", torch.get_num_threads())
    log.info("batch per process %d, global batch %d, negatives per query %d (loss.negatives=%s)",
             t["batch_size"], global_batch, negatives, cfg["loss"]["negatives"])
    total, warmup = scheduler.total_steps, scheduler.warmup_steps
    log.info("steps per epoch %d-%d, epochs %d, total steps %d, warm-up %d steps (train.warmup_ratio=%g), then "
             "linear decay to 0%s", min(epoch_lengths), max(epoch_lengths), t["epochs"], total, warmup,
             t["warmup_ratio"], f"; stopping at step {t['max_steps']}" if t["max_steps"] else "")
    if warmup > WARMUP_WARN_SHARE * total:
        log.warning("warm-up covers %d of the run's %d steps (more than a third): the lr decays over only %d steps",
                    warmup, total, total - warmup)
    for i, (g, base) in enumerate(zip(optimizer.param_groups, scheduler.base_lrs)):
        n = sum(p.numel() for p in g["params"])
        log.info("param group %-6s base lr %.3g, %d tensors, %.2fM parameters", _group_name(g, i), base,
                 len(g["params"]), n / 1e6)


def train(cfg, build_model=None):
    """Run (or continue) training as configured. Returns {"global_step", "checkpoint"}.

    `build_model(cfg)` defaults to models.build_model (tests wrap it to inject faults).
    """
    if build_model is None:
        from models import build_model
    from datasets import build_train_loader
    t = cfg["train"]
    if t["threads"]:
        torch.set_num_threads(t["threads"])
    rank, local_rank, world_size, device = init_distributed(cfg)
    if device.type == "cuda":
        problem = amp_error(t["amp"], torch.cuda.get_device_capability(device), torch.cuda.get_device_name(device))
        if problem:
            cleanup()
            raise ConfigError(problem)
    try:
        return _train(cfg, build_model, build_train_loader, rank, world_size, device)
    finally:
        cleanup()


def _resolve_resume(resume, out_dir, rank, world_size):
    """(path, state) as ckpt.resolve_resume, with resume=auto decided by rank 0 for all ranks: on
    node-local or stale network views of output_dir, ranks could otherwise pick different files."""
    if resume != "auto" or world_size == 1:
        return ckpt.resolve_resume(resume, out_dir)
    path, state = ckpt.find_latest_valid(out_dir) if rank == 0 else (None, None)
    chosen = [path]
    dist.broadcast_object_list(chosen, src=0)
    if rank == 0 or chosen[0] is None:
        return path, state
    return ckpt.resolve_resume(chosen[0], out_dir)


def load_scaler_state(scaler, state):
    """A disabled GradScaler saves {}, which an enabled one refuses: then the scaler starts afresh."""
    if state:
        scaler.load_state_dict(state)


def _train(cfg, build_model, build_loader, rank, world_size, device):
    t = cfg["train"]
    out_dir = cfg["output_dir"]
    main_proc = rank == 0
    setup_logger(rank, out_dir)
    if main_proc:
        save_config(cfg, os.path.join(out_dir, "config.yaml"))

    seed_model_init(cfg["seed"])
    model = build_model(cfg).to(device)
    resume_path, state = _resolve_resume(cfg["resume"], out_dir, rank, world_size)
    if resume_path is None and cfg["init_from"]:
        report = ckpt.load_init_weights(model, cfg["init_from"], strict=cfg["init_strict"])
        if report["problem"]:
            log.warning("%s (init_strict=false: loading what matches)", report["problem"])
        log.info("init_from %s: loaded %d tensors", cfg["init_from"], len(report["loaded"]))
        for kind in ("missing", "unexpected", "mismatched"):
            if report[kind]:
                log.warning("init_from: %d %s (not loaded): %s", len(report[kind]), kind, ", ".join(report[kind]))
    seed_data(cfg["seed"], rank)

    loader, sampler = build_loader(cfg, rank, world_size)
    # Epochs may differ in length (each query's domain is drawn per epoch): count every epoch's
    # batches so that the schedule ends exactly at the last step.
    epoch_lengths = []
    for e in range(t["epochs"]):
        sampler.set_epoch(e)
        epoch_lengths.append(len(loader))
    if min(epoch_lengths) == 0:
        raise RuntimeError(f"the training set gives no full batch of {t['batch_size']} per rank on {world_size} ranks")
    total_steps = sum(epoch_lengths)

    optimizer = build_optimizer(cfg, model)
    scheduler = LinearWarmupDecay.for_optimizer(optimizer, t["warmup_ratio"], total_steps)
    cuda = device.type == "cuda"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t["amp"]) if cuda else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    epoch, step_in_epoch, global_step, rng_states = 0, 0, 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        load_scaler_state(scaler, state["scaler"])
        scheduler.load_base_lrs(state["scheduler"])
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        changes = config_changes(state["config"], cfg)
        if changes:
            # the optimizer's lrs and hyper-parameters come back from the checkpoint, whatever the config says
            log.warning("config differs from the checkpoint's (optimizer settings are the checkpoint's): %s",
                        "; ".join(changes))
        old = state["epoch_lengths"]
        if epoch < t["epochs"] and old[:epoch + 1] != epoch_lengths[:epoch + 1]:
            # another world size or batch size: keep the share of the epoch done, restate the step count
            if step_in_epoch:
                step_in_epoch = round(step_in_epoch * epoch_lengths[epoch] / old[epoch])
            global_step = sum(epoch_lengths[:epoch]) + step_in_epoch
            log.warning("checkpoint made with epochs of %s batches (world size %d, batch %d), now %s: continuing at "
                        "step %d of epoch %d (global step %d); the data order differs from the original run",
                        old[:epoch + 1], state["world_size"], state["batch_size"], epoch_lengths[:epoch + 1],
                        step_in_epoch, epoch, global_step)
        if len(state["rng"]) == world_size:
            rng_states = state["rng"][rank]
        else:
            seed_data(cfg["seed"] + global_step, rank)
        log.info("resumed from %s: epoch %d, step %d, global step %d", resume_path, epoch, step_in_epoch, global_step)
    elif cfg["resume"] == "auto":
        log.info("resume=auto: no checkpoint in %s, starting from scratch", out_dir)
    barrier()  # every rank has read its checkpoint before rank 0 renames any
    if main_proc:
        superseded = ckpt.set_aside_later_checkpoints(out_dir, global_step)
        if superseded:
            log.warning("this run goes on from global step %d: %d step checkpoint(s) numbered above it renamed "
                        "so that rotation and resume=auto ignore them: %s", global_step, len(superseded),
                        ", ".join(superseded))

    model_ddp = model
    if world_size > 1:
        model_ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None,
                                            find_unused_parameters=t["find_unused_parameters"])
    _startup_report(cfg, world_size, epoch_lengths, scheduler, optimizer, device)

    metrics = MetricsLog(out_dir, main_proc)
    last_ckpt = resume_path
    last_saved_step = global_step if state is not None else None
    global_batch = t["batch_size"] * world_size
    max_steps = t["max_steps"] or total_steps
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext

    def save(epoch_now, step_now):
        nonlocal last_ckpt, last_saved_step
        epoch_s, step_s = (epoch_now + 1, 0) if step_now == epoch_lengths[epoch_now] else (epoch_now, step_now)
        rng = _gather_rng(world_size)  # every rank takes part; rank 0 writes
        if main_proc:
            ckpt.save_checkpoint({
                "model": ckpt.unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch_s, "step_in_epoch": step_s, "global_step": global_step, "rng": rng, "config": cfg,
                "world_size": world_size, "batch_size": t["batch_size"], "epoch_lengths": epoch_lengths,
            }, out_dir, t["keep_last"])
        # on every rank, so that each one's messages (e.g. a non-finite loss) name the file
        last_ckpt = ckpt.step_path(out_dir, global_step)
        last_saved_step = global_step

    model_ddp.train()
    wait_meter, step_meter = Meter(), Meter()
    bar = None
    try:
        while epoch < t["epochs"] and global_step < max_steps:
            # the sampler skips the batches already done in this epoch without loading them
            sampler.set_epoch(epoch, start_batch=step_in_epoch)
            # Creating a loader iterator may draw from the torch RNG; the saved states were taken
            # after that draw mid-epoch and before it at an epoch boundary.
            if rng_states is not None and step_in_epoch == 0:
                set_rng_state(rng_states)
            batches = iter(loader)
            if rng_states is not None and step_in_epoch > 0:
                set_rng_state(rng_states)
            rng_states = None
            steps_per_epoch = epoch_lengths[epoch]
            bar = tqdm(total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{t['epochs']}",
                       disable=not main_proc, dynamic_ncols=True, file=sys.stderr)
            window_start = time.perf_counter()
            window_steps = 0
            while step_in_epoch < steps_per_epoch and global_step < max_steps:
                t0 = time.perf_counter()
                batch = to_device(next(batches), device)
                t_data = time.perf_counter()
                with autocast():
                    out = model_ddp(batch)
                terms = _reduce_terms({k: v for k, v in out.items() if k.startswith("loss")}, world_size)
                check_finite(terms, global_step + 1, last_ckpt)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(out["loss"]).backward()
                if t["grad_clip"]:
                    scaler.unscale_(optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"]).item()
                step_lrs = scheduler.apply(optimizer, global_step)
                lrs = {f"lr/{_group_name(g, i)}": lr for i, (g, lr) in enumerate(zip(optimizer.param_groups, step_lrs))}
                scaler.step(optimizer)
                scaler.update()
                global_step += 1
                step_in_epoch += 1
                window_steps += 1
                bar.update(1)
                t_end = time.perf_counter()
                wait_meter.update(t_data - t0)
                step_meter.update(t_end - t0)

                if global_step % t["log_every"] == 0 or step_in_epoch == steps_per_epoch:
                    scalars = {f"train/{k}": v for k, v in terms.items()}
                    scalars.update(lrs)
                    if "logit_scale" in out:
                        scale = float(out["logit_scale"].detach().float().mean())
                        scalars.update({"train/logit_scale": scale, "train/tau": 1.0 / scale})
                    if t["grad_clip"]:
                        scalars["train/grad_norm"] = grad_norm
                    scalars["perf/samples_per_s"] = global_batch * window_steps / (t_end - window_start)
                    scalars["perf/data_wait_fraction"] = wait_meter.sum / step_meter.sum
                    scalars["perf/step_time_s"] = step_meter.avg
                    scalars["epoch"] = epoch + step_in_epoch / steps_per_epoch
                    metrics.log(global_step, scalars)
                    bar.set_postfix({k[len("train/"):]: f"{v:.4f}" for k, v in scalars.items()
                                     if k.startswith("train/loss")} | {"wait": f"{scalars['perf/data_wait_fraction']:.0%}"})
                    wait_meter.reset()
                    step_meter.reset()
                    window_start, window_steps = time.perf_counter(), 0

                if (global_step % t["save_every_steps"] == 0 or step_in_epoch == steps_per_epoch
                        or global_step == max_steps):
                    save(epoch, step_in_epoch)
            bar.close()
            if step_in_epoch == steps_per_epoch:
                epoch, step_in_epoch = epoch + 1, 0
        if last_saved_step != global_step:
            save(epoch, step_in_epoch)
        barrier()
    finally:
        if bar is not None:
            bar.close()  # also when a non-finite loss stops the run mid-epoch
        metrics.close()
    log.info("finished at global step %d; last checkpoint %s", global_step, last_ckpt)
    return {"global_step": global_step, "checkpoint": last_ckpt}


# ----------------------------------------------------------------------------- command line


def evaluate(cfg):
    """Hand over to the evaluator: write query and gallery features of eval.direction (all ranks)."""
    try:
        from evaluation import extract
    except ImportError as e:
        print(f"--evaluate: the feature extraction of evaluation.py is not available ({e})", file=sys.stderr)
        return 1
    try:
        extract(cfg)
    finally:
        cleanup()
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="YAML experiment config (see configs/)")
    p.add_argument("--evaluate", action="store_true", help="extract the query and gallery features of eval.direction instead of training (evaluation.py scores them)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        validate_config(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        if args.evaluate:
            return evaluate(cfg)
        train(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (UnsupportedGPU, ckpt.WeightsMismatch) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
