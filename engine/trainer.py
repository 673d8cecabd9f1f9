"""The training engine: one loop for every task (retrieval fine-tuning, pre-training).

The learning rate is a pure function of the global step, a checkpoint (utils.checkpoint.
TrainingCheckpoint) holds everything needed to continue the run exactly (model, optimizer,
GradScaler, schedule, data position, every rank's RNG states), and `resume=auto` continues
from the newest checkpoint in output_dir that loads.

`train.batch_size` is the per-process batch of one optimizer step; with `train.accum_steps` = n > 1 it is cut
into n equal micro-batches and the step is feature-cached (GradCache, as OpenCLIP's --accum-freq), with the
same result as n = 1 but the activation memory of one micro-batch. A model with batch-level terms implements
the accumulation protocol:

- `embed(batch)` -> (embeddings, local): embeddings, tensors [b, ...] (b the micro-batch) that the batch-level
  terms read, extra inputs such as labels or masks included; local, the per-sample terms ("loss_<term>",
  each a mean over the micro-batch), and any scalars to log;
- `batch_terms(embeddings)` -> the batch-level terms ("loss_<term>") over the whole per-process batch (the
  micro-batches' embeddings concatenated in order; global negatives gather across ranks inside), and any
  scalars to log (e.g. "logit_scale");
- `total(terms)` -> the weighted sum of the loss terms given (a subset of them when only some are present);

and `forward(batch)` returns the same values as {**local, **batch_terms(embeddings), "loss": total(...)} on the
whole batch. The step: every micro-batch's embeddings without gradient (the RNG state saved before each),
the batch-level terms on their concatenation made leaves, and their gradient with respect to each embedding
and to the parameters they use directly (e.g. the temperature); then each micro-batch again, its RNG state
restored so that dropout and masks are drawn as in the first pass, back-propagated from
sum(embedding x its cached gradient) + its weighted local terms / n, the parameters' gradients added with the
last one. Under DDP only that last backward all-reduces (no_sync before it). A micro-batch draws its masks
and dropout from its own slice of the random stream, so the draws differ from those of one pass over the
whole batch; the step is exact for the draws it makes.
"""
import contextlib
import datetime
import logging
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from engine.run_dir import RunDirError
from utils import checkpoint as ckpt
from utils import logging as run_logging
from utils.config import ConfigError, save_config
from utils.distributed import barrier, from_rank0
from utils.logging import LOGGER_NAME, STEP_LOGGER, Meter, MetricsLog
from utils.preemption import SaveTimer, preempted_line
from utils.schedule import SCHEDULES, WARMUP_WARN_SHARE
from utils.seed import get_rng_state, seed_data, seed_model_init, set_rng_state

log = logging.getLogger(LOGGER_NAME)
step_log = logging.getLogger(STEP_LOGGER)


class NonFiniteLoss(RuntimeError):
    pass


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
# autocast dtype of train.amp on a GPU (a CPU run has none)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def group_rates(cfg):
    """The base lr of each parameter group a model names (its `param_groups()`)."""
    t, lr_new = cfg["train"], cfg["pretrain"]["lr_new"]
    return {"visual": t["lr_visual"], "text": t["lr"], "recon": t["lr_recon"],
            "new": t["lr"] if lr_new is None else lr_new, "other": t["lr"]}


def build_optimizer(cfg, model):
    """train.optimizer over the model's named parameter groups, each with its own lr (group_rates)."""
    t = cfg["train"]
    rates = group_rates(cfg)
    groups = [dict(g, lr=rates[g["name"]], weight_decay=t["weight_decay"]) for g in model.param_groups()]
    return OPTIMIZERS[t["optimizer"]](groups, lr=t["lr"], weight_decay=t["weight_decay"])


def to_device(batch, device):
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


# the methods of the accumulation protocol (module docstring)
ACCUMULATION_METHODS = ("embed", "batch_terms", "total")


def check_accumulation(model, cfg):
    """train.accum_steps > 1 needs the accumulation protocol, and no BatchNorm (its statistics would be a
    micro-batch's)."""
    n = cfg["train"]["accum_steps"]
    if n == 1:
        return
    where = f"task={cfg['task']} with model.family={cfg['model']['family']}"
    lacking = [m for m in ACCUMULATION_METHODS if not callable(getattr(model, m, None))]
    if lacking:
        raise ConfigError(f"train.accum_steps={n}: the model of {where} has no {', '.join(lacking)} (the "
                          "accumulation protocol of engine/trainer.py); set train.accum_steps=1")
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(f"train.accum_steps={n}: the model of {where} has BatchNorm layers, whose statistics "
                          "would be those of a micro-batch; set train.accum_steps=1")


def split_batch(batch, parts):
    """The `parts` micro-batches of a loader batch: each tensor with a first dimension cut into equal slices
    along it; other values (the domain, the epoch) go to every micro-batch as they are."""
    rows = {v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.dim()}
    if len(rows) != 1 or next(iter(rows)) % parts:
        raise ValueError(f"cannot cut a batch of {sorted(rows)} rows into {parts} equal micro-batches "
                         "(train.accum_steps)")
    b = rows.pop() // parts
    return [{k: v[i * b:(i + 1) * b] if torch.is_tensor(v) and v.dim() else v for k, v in batch.items()}
            for i in range(parts)]


class Embedder(torch.nn.Module):
    """The model whose forward is its `embed`: what DDP wraps under accumulation, so that the recomputation
    of a micro-batch is a DDP forward (gradient hooks, no_sync)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.embed(batch)


class FeatureCachedStep:
    """The gradients of one optimizer step in `accum_steps` micro-batches (module docstring): `forward(batch)`
    gives the loss terms as model(batch) would, `backward()` then leaves the step's gradients in .grad.
    embedder: the Embedder of model, or a DDP of it (then only the last micro-batch's backward all-reduces);
    scaler: the run's GradScaler (the cached gradients are of the scaled loss)."""

    def __init__(self, model, embedder, accum_steps, scaler):
        self.model, self.embedder, self.n, self.scaler = model, embedder, accum_steps, scaler
        self.ddp = isinstance(embedder, DistributedDataParallel)

    def forward(self, batch, autocast=contextlib.nullcontext()):
        """Every micro-batch's embeddings without gradient, then the batch-level terms on their concatenation."""
        model = self.model
        self.micro = split_batch(batch, self.n)
        self.rng, parts, local = [], [], []
        with torch.no_grad(), autocast:
            for m in self.micro:
                self.rng.append(get_rng_state())
                emb, loc = model.embed(m)
                parts.append(emb)
                local.append(loc)
        self.leaves = {k: torch.cat([e[k] for e in parts]) for k in parts[0]}
        for v in self.leaves.values():
            v.requires_grad_(v.is_floating_point())
        with autocast:
            out = model.batch_terms(self.leaves)
            batch_losses = {k: v for k, v in out.items() if k.startswith("loss_")}
            self.batch_loss = model.total(batch_losses) if batch_losses else None
        out.update({k: torch.stack([loc[k].detach().float() for loc in local]).mean() for k in local[0]})
        out["loss"] = model.total({k: v.detach() for k, v in out.items() if k.startswith("loss_")})
        self.after = get_rng_state()  # the stream goes on after the batch-level terms' draws (e.g. VTM's)
        return out

    def backward(self, autocast=contextlib.nullcontext()):
        """The cached gradients, then each micro-batch recomputed with its RNG state and back-propagated."""
        model, n, leaves = self.model, self.n, self.leaves
        rows = next(iter(leaves.values())).shape[0] // n if leaves else 0
        cached, param_grads = {}, []
        if self.batch_loss is not None and self.batch_loss.requires_grad:
            names = [k for k, v in leaves.items() if v.requires_grad]
            params = [p for p in model.parameters() if p.requires_grad]
            grads = torch.autograd.grad(self.scaler.scale(self.batch_loss), [leaves[k] for k in names] + params,
                                        allow_unused=True)
            cached = {k: g for k, g in zip(names, grads) if g is not None}
            param_grads = [(p, g) for p, g in zip(params, grads[len(names):]) if g is not None]
        for i, m in enumerate(self.micro):
            set_rng_state(self.rng[i])
            last = i == n - 1
            with self.embedder.no_sync() if self.ddp and not last else contextlib.nullcontext():
                with autocast:
                    emb, loc = self.embedder(m)
                    surrogate = [(emb[k] * g[i * rows:(i + 1) * rows]).sum() for k, g in cached.items()]
                    loc_losses = {k: v for k, v in loc.items() if k.startswith("loss_")}
                    if loc_losses:
                        surrogate.append(self.scaler.scale(model.total(loc_losses) / n))
                    if last:  # the parameters the batch-level terms use directly, in the backward that syncs
                        surrogate.extend((p * g).sum() for p, g in param_grads)
                total = sum(surrogate)
                if torch.is_tensor(total) and total.requires_grad:
                    total.backward()
        set_rng_state(self.after)
        self.micro = self.rng = self.leaves = self.batch_loss = None


def reduce_terms(terms, world_size):
    """Mean of each loss term over ranks (also makes a NaN on one rank visible to all)."""
    names = sorted(terms)
    values = torch.stack([terms[k].detach().float().reshape(()) for k in names])
    if world_size > 1:
        dist.all_reduce(values)
        values /= world_size
    return dict(zip(names, values.tolist()))


def lower_lr_overrides(cfg):
    """Command-line overrides halving every base lr the config sets (train.lr, lr_visual, lr_recon, pretrain.lr_new)."""
    t, lr_new = cfg["train"], cfg["pretrain"]["lr_new"]
    rates = [("train.lr", t["lr"]), ("train.lr_visual", t["lr_visual"]), ("train.lr_recon", t["lr_recon"])]
    if lr_new is not None:
        rates.append(("pretrain.lr_new", lr_new))
    return " ".join(f"{key}={value / 2:g}" for key, value in rates)


def check_finite(terms, global_step, last_checkpoint, cfg):
    # the weighted total last, so that the message names the term that went wrong
    for name, value in sorted(terms.items(), key=lambda kv: (kv[0] == "loss", kv[0])):
        if not math.isfinite(value):
            lower = lower_lr_overrides(cfg)
            if last_checkpoint:
                # a fresh run goes to another folder: resume=null here would set the checkpoint aside
                advice = (f"To go on at half the lr, rerun with resume={last_checkpoint} {lower} (the schedule "
                          f"continues from its step), or start afresh from its weights with output_dir=<a new "
                          f"folder> init_from={last_checkpoint} {lower}")
            else:
                advice = f"To start again at half the lr, rerun with resume=null {lower}"
            raise NonFiniteLoss(
                f"non-finite {name} = {value} at step {global_step}; stopping. {advice}. "
                f"Last good checkpoint: {last_checkpoint or 'none written in this run'}")


def gather_rng(world_size):
    state = get_rng_state()
    if world_size == 1:
        return [state]
    states = [None] * world_size
    dist.all_gather_object(states, state)
    return states


def resolve_resume(resume, out_dir, rank, world_size):
    """(path, state) as ckpt.resolve_resume, with resume=auto decided by rank 0 for all ranks: on
    node-local or stale network views of output_dir, ranks could otherwise pick different files."""
    if resume != "auto" or world_size == 1:
        return ckpt.resolve_resume(resume, out_dir)
    path, state = ckpt.find_latest_valid(out_dir) if rank == 0 else (None, None)
    chosen = from_rank0(path, world_size)
    if rank == 0 or chosen is None:
        return path, state
    return ckpt.resolve_resume(chosen, out_dir)


def load_scaler_state(scaler, state):
    """A disabled GradScaler saves {}, which an enabled one refuses: then the scaler starts afresh."""
    if state:
        scaler.load_state_dict(state)


def startup_report(cfg, world_size, epoch_lengths, scheduler, optimizer, device):
    t = cfg["train"]
    global_batch = t["batch_size"] * world_size
    negatives = (global_batch if cfg["loss"]["negatives"] == "global" else t["batch_size"]) - 1
    log.info("task %s, world size %d, device %s, amp %s, torch threads %d", cfg["task"], world_size, device,
             t["amp"] if device.type == "cuda" else "none (CPU)", torch.get_num_threads())
    log.info("batch per process %d, global batch %d, negatives per query %d (loss.negatives=%s)",
             t["batch_size"], global_batch, negatives, cfg["loss"]["negatives"])
    if t["accum_steps"] > 1:
        log.info("feature-cached accumulation: %d micro-batches of %d per optimizer step", t["accum_steps"],
                 t["batch_size"] // t["accum_steps"])
    total, warmup = scheduler.total_steps, scheduler.warmup_steps
    log.info("steps per epoch %d-%d, epochs %d, total steps %d, warm-up %d steps (train.warmup_ratio=%g), then "
             "%s decay to 0%s", min(epoch_lengths), max(epoch_lengths), t["epochs"], total, warmup,
             t["warmup_ratio"], t["schedule"], f"; stopping at step {t['max_steps']}" if t["max_steps"] else "")
    if warmup > WARMUP_WARN_SHARE * total:
        log.warning("warm-up covers %d of the run's %d steps (more than a third): the lr decays over only %d steps",
                    warmup, total, total - warmup)
    for g, base in zip(optimizer.param_groups, scheduler.base_lrs):
        n = sum(p.numel() for p in g["params"])
        log.info("param group %-6s base lr %.3g, %d tensors, %.2fM parameters", g["name"], base,
                 len(g["params"]), n / 1e6)


def log_init_from(report, path):
    if report["problem"]:
        log.warning("%s (init_strict=false: loading what matches)", report["problem"])
    log.info("init_from %s: loaded %d tensors", path, len(report["loaded"]))
    for kind in ("missing", "unexpected", "mismatched"):
        if report[kind]:
            log.warning("init_from: %d %s (not loaded): %s", len(report[kind]), kind, ", ".join(report[kind]))


def renumbered_line(state, step, world_size, t, total_steps):
    """What is left of a run renumbered onto another world size or batch size: train.max_steps counts steps of
    the new one, like the schedule, which is restated over the new epoch lengths."""
    end = min(t["max_steps"] or total_steps, total_steps)
    left = max(0, end - step)
    limit = f"max_steps={t['max_steps']}" if t["max_steps"] else "no max_steps: the schedule's end"
    return (f"resumed step {state.global_step} of {state.world_size} x {state.batch_size} samples as step {step} "
            f"of {world_size} x {t['batch_size']}: {limit} trains {left} more steps ({left * t['batch_size']} "
            f"samples x {world_size} ranks); schedule 0 .. {total_steps} steps")


class Trainer:
    """One training run of `task` (engine.tasks.Task) on this process: `run()` trains to the end
    of the schedule (or train.max_steps, or a stop signal: utils.preemption) and returns {"global_step",
    "checkpoint", "preempted": the signal's name or None}."""

    def __init__(self, cfg, task, rank, world_size, device, resume_path=None, state=None):
        """`resume_path`, `state`: the checkpoint (a TrainingCheckpoint) to continue from, already checked
        against cfg (engine.train), or None."""
        self.cfg, self.t = cfg, cfg["train"]
        self.rank, self.world_size, self.device = rank, world_size, device
        self.main = rank == 0
        self.out_dir = cfg["output_dir"]
        if self.main:
            save_config(cfg, os.path.join(self.out_dir, "config.yaml"))

        seed_model_init(cfg["seed"])
        self.model = task.build_model(cfg).to(device)
        check_accumulation(self.model, cfg)
        self.accum_steps = self.t["accum_steps"]
        if resume_path is None and cfg["init_from"]:
            report = ckpt.load_init_weights(self.model, cfg["init_from"], strict=cfg["init_strict"])
            log_init_from(report, cfg["init_from"])
        seed_data(cfg["seed"], rank)

        self.loader, self.sampler = task.build_loader(cfg, rank, world_size)
        self.epoch_lengths = self._count_batches()
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = SCHEDULES[self.t["schedule"]].for_optimizer(self.optimizer, self.t["warmup_ratio"],
                                                                     sum(self.epoch_lengths))
        cuda = device.type == "cuda"
        self.amp_dtype = AMP_DTYPES[self.t["amp"]] if cuda else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

        self.epoch, self.step_in_epoch, self.global_step, self.rng_states = 0, 0, 0, None
        self.last_ckpt, self.last_saved_step = resume_path, None
        self.save_timer = SaveTimer(self.t["save_every_minutes"])
        if state is not None:
            self._restore(state, resume_path)
        elif cfg["resume"] == "auto":
            log.info("resume=auto: no checkpoint in %s, starting from scratch", self.out_dir)
        self._set_aside_later_checkpoints()

        self.model_ddp = self.model
        if world_size > 1:
            module = self.model if self.accum_steps == 1 else Embedder(self.model)
            self.model_ddp = DistributedDataParallel(module, device_ids=[device.index] if cuda else None,
                                                     find_unused_parameters=self.t["find_unused_parameters"])
        self.cache = None
        if self.accum_steps > 1:
            self.cache = FeatureCachedStep(self.model, self.model_ddp if world_size > 1 else Embedder(self.model),
                                           self.accum_steps, self.scaler)
        startup_report(cfg, world_size, self.epoch_lengths, self.scheduler, self.optimizer, device)

    def _count_batches(self):
        """Batches of every epoch: epochs may differ in length (e.g. each query's domain is drawn per
        epoch), and the schedule must end exactly at the last step."""
        lengths = []
        for e in range(self.t["epochs"]):
            self.sampler.set_epoch(e)
            lengths.append(len(self.loader))
        if min(lengths) == 0:
            raise ValueError(f"the training list {self.cfg['data']['train_file']} gives no full batch of "
                             f"{self.t['batch_size']} per rank on {self.world_size} ranks in some epoch; lower "
                             "train.batch_size or start fewer processes (NPROC_PER_NODE)")
        return lengths

    def _restore(self, state, path):
        try:
            ckpt.load_model_weights(self.model, path, state=state.model)
        except ckpt.WeightsMismatch as e:
            raise RunDirError(f"{e}\nThis checkpoint cannot continue the run: pick another output_dir, or pass "
                              "resume=null to start afresh") from None
        self.optimizer.load_state_dict(state.optimizer)
        load_scaler_state(self.scaler, state.scaler)
        configured = self.scheduler.base_lrs
        self.scheduler.load_base_lrs(state.scheduler)  # checks that the parameter groups match
        if self.scheduler.base_lrs != configured:
            log.warning("base lrs changed on resume (%s): the schedule goes on from the resumed step with the new "
                        "ones", ", ".join(f"{g['name']} {a:.3g} -> {b:.3g}" for g, a, b in zip(
                            self.optimizer.param_groups, self.scheduler.base_lrs, configured) if a != b))
        # the config's base lrs (train.lr etc. may change on resume: engine.run_dir.RESUME_FREE_KEYS)
        self.scheduler.base_lrs = configured
        self.epoch, self.step_in_epoch, self.global_step = state.epoch, state.step_in_epoch, state.global_step
        self._renumber(state)
        self.last_saved_step = self.global_step
        if len(state.rng) == self.world_size:
            self.rng_states = state.rng[self.rank]
        else:
            seed_data(self.cfg["seed"] + self.global_step, self.rank)
        log.info("resumed from %s: epoch %d, step %d, global step %d", path, self.epoch, self.step_in_epoch,
                 self.global_step)

    def _renumber(self, state):
        """Another world size or batch size: keep the share of the epoch done, restate the step count."""
        old, new, epoch = state.epoch_lengths, self.epoch_lengths, self.epoch
        if epoch >= self.t["epochs"] or old[:epoch + 1] == new[:epoch + 1]:
            return
        if self.step_in_epoch:
            self.step_in_epoch = round(self.step_in_epoch * new[epoch] / old[epoch])
        self.global_step = sum(new[:epoch]) + self.step_in_epoch
        log.warning("checkpoint made with epochs of %s batches (world size %d, batch %d), now %s: continuing at "
                    "step %d of epoch %d (global step %d); the data order differs from the original run",
                    old[:epoch + 1], state.world_size, state.batch_size, new[:epoch + 1], self.step_in_epoch,
                    epoch, self.global_step)
        log.info("%s", renumbered_line(state, self.global_step, self.world_size, self.t, sum(new)))

    def _set_aside_later_checkpoints(self):
        barrier()  # every rank has read its checkpoint before rank 0 renames any
        if not self.main:
            return
        superseded = ckpt.set_aside_later_checkpoints(self.out_dir, self.global_step)
        if superseded:
            log.warning("this run goes on from global step %d: %d step checkpoint(s) numbered above it renamed "
                        "so that rotation and resume=auto ignore them: %s", self.global_step, len(superseded),
                        ", ".join(superseded))

    def save(self):
        if self.step_in_epoch == self.epoch_lengths[self.epoch]:
            epoch, step = self.epoch + 1, 0
        else:
            epoch, step = self.epoch, self.step_in_epoch
        rng = gather_rng(self.world_size)  # every rank takes part; rank 0 writes
        error = None
        if self.main:
            try:
                ckpt.save_checkpoint(ckpt.TrainingCheckpoint(
                    model=ckpt.unwrap(self.model).state_dict(), optimizer=self.optimizer.state_dict(),
                    scaler=self.scaler.state_dict(), scheduler=self.scheduler.state_dict(), epoch=epoch,
                    step_in_epoch=step, global_step=self.global_step, rng=rng, config=self.cfg,
                    world_size=self.world_size, batch_size=self.t["batch_size"], epoch_lengths=self.epoch_lengths),
                    self.out_dir, self.t["keep_last"])
            except ckpt.CheckpointWriteError as e:
                error = e.strerror
        error = from_rank0(error, self.world_size)  # the other ranks stop too, rather than wait for rank 0
        if error:
            raise ckpt.CheckpointWriteError(f"{error}. Last good checkpoint: {self.last_ckpt or 'none'}")
        # on every rank, so that each one's messages (e.g. a non-finite loss) name the file
        self.last_ckpt = ckpt.step_path(self.out_dir, self.global_step)
        self.last_saved_step = self.global_step
        self.save_timer.restart()

    def _agreed_flags(self, stop):
        """(stop now, save now), the same on every rank, so that all ranks save and stop at the same step:
        a signal to any rank stops all of them; train.save_every_minutes is timed on rank 0's clock."""
        flags = torch.tensor([stop.received is not None, self.main and self.save_timer.due()],
                             dtype=torch.float32, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return [bool(f) for f in flags.tolist()]

    def step(self, batch):
        """One optimizer step -> (loss terms averaged over ranks, the model's output, {"lr/<group>": lr}, grad norm)."""
        autocast = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        if self.accum_steps > 1:
            out = self.cache.forward(batch, autocast)
        else:
            with autocast:
                out = self.model_ddp(batch)
        terms = reduce_terms({k: v for k, v in out.items() if k.startswith("loss")}, self.world_size)
        check_finite(terms, self.global_step + 1, self.last_ckpt, self.cfg)
        self.optimizer.zero_grad(set_to_none=True)
        if self.accum_steps > 1:
            self.cache.backward(autocast)
        else:
            self.scaler.scale(out["loss"]).backward()
        grad_norm = None
        if self.t["grad_clip"]:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.t["grad_clip"]).item()
        step_lrs = self.scheduler.apply(self.optimizer, self.global_step)
        lrs = {f"lr/{g['name']}": lr for g, lr in zip(self.optimizer.param_groups, step_lrs)}
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        self.step_in_epoch += 1
        return terms, out, lrs, grad_norm

    def _epoch_batches(self):
        """The iterator of the current epoch from step_in_epoch on, with the resumed RNG states in place."""
        # the sampler skips the batches already done in this epoch without loading them
        self.sampler.set_epoch(self.epoch, start_batch=self.step_in_epoch)
        # Creating a loader iterator may draw from the torch RNG; the saved states were taken
        # after that draw mid-epoch and before it at an epoch boundary.
        if self.rng_states is not None and self.step_in_epoch == 0:
            set_rng_state(self.rng_states)
        batches = iter(self.loader)
        if self.rng_states is not None and self.step_in_epoch > 0:
            set_rng_state(self.rng_states)
        self.rng_states = None
        return batches

    def run(self, stop):
        """stop: the StopSignals (utils.preemption) whose signal ends the run at the next step, with a checkpoint."""
        metrics = MetricsLog(self.out_dir, self.main)
        metrics.text("config", "    " + yaml.safe_dump(self.cfg, allow_unicode=True, sort_keys=False)
                     .replace("\n", "\n    "), self.global_step)
        window = _Window(self.t["batch_size"] * self.world_size)
        max_steps = min(self.t["max_steps"] or sum(self.epoch_lengths), sum(self.epoch_lengths))
        self.model_ddp.train()
        bar = tqdm(total=max_steps, initial=self.global_step, desc="train", unit="step", dynamic_ncols=True,
                   file=sys.stderr, disable=not (self.main and run_logging.progress_bar_shown()))
        eta = _Eta(self.global_step, max_steps)
        preempted = None
        try:
            while self.epoch < self.t["epochs"] and self.global_step < max_steps and not preempted:
                batches = self._epoch_batches()
                steps_per_epoch = self.epoch_lengths[self.epoch]
                counts_at_start = self.loader.dataset.raw_counts()
                window.restart()
                while self.step_in_epoch < steps_per_epoch and self.global_step < max_steps and not preempted:
                    t0 = time.perf_counter()
                    batch = to_device(next(batches), self.device)
                    t_data = time.perf_counter()
                    terms, out, lrs, grad_norm = self.step(batch)
                    bar.update(1)
                    window.add(t_data - t0, time.perf_counter() - t0)
                    end_of_epoch = self.step_in_epoch == steps_per_epoch
                    if self.global_step % self.t["log_every"] == 0 or end_of_epoch or self.global_step == max_steps:
                        scalars = self._scalars(terms, out, lrs, grad_norm, window, steps_per_epoch)
                        if end_of_epoch:
                            scalars.update(self._epoch_data(counts_at_start))
                        metrics.log(self.global_step, scalars)
                        step_log.info("%s", step_line(self.global_step, max_steps, scalars, eta.left(self.global_step)))
                        bar.set_postfix({"epoch": f"{scalars['epoch']:.2f}", "loss": f"{scalars['train/loss']:.4f}",
                                         "wait": f"{scalars['perf/data_wait_fraction']:.0%}"})
                        window.restart()
                    stop_now, save_now = self._agreed_flags(stop)
                    if stop_now:
                        # any rank's signal, agreed above; only the ranks that received one know which
                        preempted = stop.received or "a signal to another rank"
                    if self.global_step % self.t["save_every_steps"] == 0 or end_of_epoch or \
                            self.global_step == max_steps or save_now or stop_now:
                        self.save()
                if self.step_in_epoch == steps_per_epoch:
                    self.epoch, self.step_in_epoch = self.epoch + 1, 0
            if self.last_saved_step != self.global_step:
                self.save()
            barrier()
        finally:
            bar.close()  # also when a non-finite loss stops the run mid-epoch
            metrics.close()
        if preempted:
            if self.main:  # one line for the run, not one per rank
                log.warning("%s", preempted_line(self.global_step, self.last_ckpt))
        else:
            log.info("finished at global step %d; last checkpoint %s", self.global_step, self.last_ckpt)
        return {"global_step": self.global_step, "checkpoint": self.last_ckpt, "preempted": preempted}

    def _scalars(self, terms, out, lrs, grad_norm, window, steps_per_epoch):
        scalars = {f"train/{k}": v for k, v in terms.items()}
        scalars.update(lrs)
        if "logit_scale" in out:
            scale = float(out["logit_scale"].detach().float().mean())
            scalars.update({"train/logit_scale": scale, "train/tau": 1.0 / scale})
        for key, value in out.items():
            if key.startswith("stat_"):  # values a task reports besides its losses (e.g. EPL's w_t)
                scalars[f"train/{key[len('stat_'):]}"] = float(value)
        if grad_norm is not None:
            scalars["train/grad_norm"] = grad_norm
        scalars.update(window.scalars())
        scalars["epoch"] = self.epoch + self.step_in_epoch / steps_per_epoch
        return scalars

    def _epoch_data(self, counts_at_start):
        """The dataset's report of the epoch's data events (since this run started in it), summed over ranks:
        its data/* scalars, and its lines logged."""
        dataset = self.loader.dataset
        now = dataset.raw_counts()
        names = sorted(now)
        delta = torch.tensor([now[k] - counts_at_start[k] for k in names], dtype=torch.float64)
        if self.world_size > 1:
            dist.all_reduce(delta)
        scalars, lines = dataset.epoch_report(dict(zip(names, delta.long().tolist())))
        for line in lines:
            log.info("epoch %d %s", self.epoch + 1, line)
        return scalars


def step_line(step, max_steps, scalars, eta_s):
    """The train.log line of a log step: step, epoch, loss terms, lr per group, tau, throughput, ETA."""
    losses = " ".join(f"{k[len('train/'):]} {v:.4f}" for k, v in scalars.items() if k.startswith("train/loss"))
    lrs = " ".join(f"{k[len('lr/'):]} {v:.3g}" for k, v in scalars.items() if k.startswith("lr/"))
    tau = f" | tau {scalars['train/tau']:.4f}" if "train/tau" in scalars else ""
    eta = "?" if eta_s is None else str(datetime.timedelta(seconds=round(eta_s)))
    return (f"step {step}/{max_steps} epoch {scalars['epoch']:.2f} | {losses} | lr {lrs}{tau} | "
            f"{scalars['perf/samples_per_s']:.1f} samples/s, data wait {scalars['perf/data_wait_fraction']:.0%} | "
            f"ETA {eta}")


class _Eta:
    """Time left for the whole run, from the mean step time since this process started training."""

    def __init__(self, first_step, last_step):
        self.first, self.last, self.start = first_step, last_step, time.perf_counter()

    def left(self, step):
        done = step - self.first
        return (time.perf_counter() - self.start) / done * (self.last - step) if done else None


class _Window:
    """Throughput and data-wait share over the steps since the last log line."""

    def __init__(self, global_batch):
        self.global_batch = global_batch
        self.wait, self.step = Meter(), Meter()
        self.restart()

    def restart(self):
        self.wait.reset()
        self.step.reset()
        self.start, self.steps = time.perf_counter(), 0

    def add(self, wait_s, step_s):
        self.wait.update(wait_s)
        self.step.update(step_s)
        self.steps += 1

    def scalars(self):
        return {"perf/samples_per_s": self.global_batch * self.steps / (time.perf_counter() - self.start),
                "perf/data_wait_fraction": self.wait.sum / self.step.sum, "perf/step_time_s": self.step.avg}
