"""Learning-rate schedules (`train.schedule`, SCHEDULES): linear warm-up over a share of the run, then
linear decay to 0 (§5.1, `linear`) or cosine decay to 0 (COPE's schedule, `cosine`).

The lr of every parameter group is its base lr times `lr_factor(global_step, ...)`, assigned
directly before each optimizer step: the schedule has no state of its own beyond the base lrs,
so a resumed run (or one resumed on another world size, whose step count is restated) gets
the lr of its step by construction.
"""
import math

# warm-up longer than this share of the run is almost certainly a misconfiguration
WARMUP_WARN_SHARE = 1 / 3


def lr_factor(step, warmup_steps, total_steps):
    """Multiplier of the base lr for the optimizer step `step` (0-based): linear warm-up, then linear decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    return max(0.0, (total_steps - step) / (total_steps - warmup_steps))


def cosine_lr_factor(step, warmup_steps, total_steps):
    """As lr_factor, with the decay after warm-up following half a cosine period from 1 to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_for(warmup_ratio, total_steps):
    """Warm-up length in optimizer steps: `warmup_ratio` of the run, rounded up (at least 1 step when the ratio is > 0)."""
    return math.ceil(warmup_ratio * total_steps)


class LinearWarmupDecay:
    """Assigns each group's lr from the global step. `base_lrs` are the groups' lrs at full strength."""

    factor = staticmethod(lr_factor)

    def __init__(self, base_lrs, warmup_steps, total_steps):
        self.base_lrs = list(base_lrs)
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    @classmethod
    def for_optimizer(cls, optimizer, warmup_ratio, total_steps):
        return cls([g["lr"] for g in optimizer.param_groups], warmup_steps_for(warmup_ratio, total_steps), total_steps)

    def lrs(self, step):
        f = self.factor(step, self.warmup_steps, self.total_steps)
        return [base * f for base in self.base_lrs]

    def apply(self, optimizer, step):
        """Set every group's lr to that of optimizer step `step` (0-based) and return them."""
        lrs = self.lrs(step)
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        return lrs

    def state_dict(self):
        return {"base_lrs": self.base_lrs, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}

    def load_base_lrs(self, state):
        """Take the base lrs of a checkpoint's schedule state. Older checkpoints hold a LambdaLR state
        dict, which also has `base_lrs`; warm-up and length always follow the current run."""
        if len(state["base_lrs"]) != len(self.base_lrs):
            raise ValueError(f"checkpoint schedule has {len(state['base_lrs'])} parameter groups, "
                             f"the model has {len(self.base_lrs)}")
        self.base_lrs = list(state["base_lrs"])


class CosineWarmupDecay(LinearWarmupDecay):
    """The same warm-up, then cosine decay (cosine_lr_factor); saved and resumed as LinearWarmupDecay."""

    factor = staticmethod(cosine_lr_factor)


# train.schedule -> the schedule class the trainer builds
SCHEDULES = {"linear": LinearWarmupDecay, "cosine": CosineWarmupDecay}
