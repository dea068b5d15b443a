"""The paper's optimiser recipe, the usual AdamW alternative, and per-group learning rates."""

import re

import keras
from keras import ops

OPTIMIZERS = ("adafactor", "adamw")

# The recurrent cell's state path, by variable path: the state's norm, IDs, initial value,
# projections, attention scales, gate(s) and MLP, and the tokens' scale for reading the state.
STATE_PATH = r"(^|/)(state_[^/]*|initial_state|token_cross_scale)(/|$)"


@keras.saving.register_keras_serializable(package="keras_brt")
class InverseSquareRootDecay(keras.optimizers.schedules.LearningRateSchedule):
    """meliad's `lr_rsqrt_decay_std`: linear warm-up, then `1 / sqrt(step)`.

    `lr(step) = scale * min(step / warmup_steps, 1) / sqrt(max(step, warmup_steps))`.
    With `scale=1.0` and 1000 warm-up steps (the paper's recipe, used with
    Adafactor's parameter-relative updates) the peak is about 0.0316.

    Args:
        warmup_steps: int. Linear warm-up length (1000 in the paper).
        scale: float. Multiplier of the whole curve.
    """

    def __init__(self, warmup_steps=1000, scale=1.0):
        if warmup_steps < 1:
            raise ValueError(f"`warmup_steps` must be at least 1. Received: warmup_steps={warmup_steps}")
        self.warmup_steps = warmup_steps
        self.scale = scale

    def __call__(self, step):
        step = ops.cast(step, "float32") + 1.0
        warmup = float(self.warmup_steps)
        ramp = ops.minimum(step / warmup, 1.0)
        return self.scale * ramp / ops.sqrt(ops.maximum(step, warmup))

    def get_config(self):
        return {"warmup_steps": self.warmup_steps, "scale": self.scale}


@keras.saving.register_keras_serializable(package="keras_brt")
class GroupedAdamW(keras.optimizers.AdamW):
    """AdamW whose learning rate is multiplied for groups of variables chosen by path.

    Adam moves every parameter by about one learning rate per step whatever the size of
    its gradient, so a path whose gradients are small and noisy (the recurrent state's,
    20-100x smaller than the window's) does not catch up by itself; a multiplier on its
    learning rate is the direct lever. Weight decay keeps the base learning rate.
    Measured on the state path (bench/results/NOTES.md): x3 trained level with x1 and x10
    was worse, so the defaults do not use it; it is here for such experiments.

    Args:
        learning_rate_multipliers: dict of regular expression -> float. A variable whose
            `path` matches a pattern (`re.search`) has its learning rate multiplied by
            that pattern's factor (the first match wins); others by 1.
            `keras_brt.training.optimizers.STATE_PATH` selects the recurrent state path.
        **kwargs: the arguments of `keras.optimizers.AdamW`.

    Example:

    ```python
    optimizer = GroupedAdamW({STATE_PATH: 10.0}, learning_rate=1e-3)
    lm.compile(optimizer=optimizer)
    ```
    """

    def __init__(self, learning_rate_multipliers=None, **kwargs):
        super().__init__(**kwargs)
        multipliers = dict(learning_rate_multipliers or {})
        for pattern, factor in multipliers.items():
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"`learning_rate_multipliers` holds an invalid pattern ({error}). "
                                 f"Received: {pattern!r}") from None
            if not isinstance(factor, (int, float)) or not factor > 0:
                raise ValueError("`learning_rate_multipliers` values must be positive numbers. "
                                 f"Received: {pattern!r}: {factor!r}")
        self.learning_rate_multipliers = multipliers
        self._multipliers = []

    def multiplier(self, path):
        """The factor for the variable at `path`."""
        for pattern, factor in self.learning_rate_multipliers.items():
            if re.search(pattern, path):
                return float(factor)
        return 1.0

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._multipliers = [self.multiplier(v.path) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._multipliers[self._get_variable_index(variable)]
        if factor != 1.0:
            learning_rate = learning_rate * factor
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "learning_rate_multipliers": self.learning_rate_multipliers}


def make_optimizer(name="adamw", steps=10_000, learning_rate=None, warmup_steps=None,
                   clip_norm=1.0, weight_decay=0.01, state_learning_rate_multiplier=1.0):
    """Returns a configured optimizer.

    - `"adafactor"`: the paper's recipe: Adafactor (factored second moments,
      updates scaled by the parameters' RMS) with `InverseSquareRootDecay`
      (`learning_rate` scales the curve, default 1.0).
      Keras's Adafactor keeps no first moment; meliad's used beta_1 = 0.9.
    - `"adamw"`: AdamW with linear warm-up then cosine decay to 10% of the
      peak `learning_rate` (default 1e-3).

    Both warm up over `warmup_steps`, by default 1000 (the paper's) or a tenth of
    a run shorter than 10,000 `steps`, so that a short run leaves its warm-up.

    Both clip the global gradient norm at `clip_norm` (None: no clipping). With
    `state_learning_rate_multiplier` other than 1, `"adamw"` is a `GroupedAdamW` whose
    recurrent state path (`STATE_PATH`) learns that many times faster.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}. Received: optimizer={name!r}")
    if steps < 1:
        raise ValueError(f"`steps` must be at least 1. Received: steps={steps}")
    if not state_learning_rate_multiplier > 0:
        raise ValueError("`state_learning_rate_multiplier` must be positive. "
                         f"Received: state_learning_rate_multiplier={state_learning_rate_multiplier}")
    if name == "adafactor" and state_learning_rate_multiplier != 1.0:
        raise ValueError("`state_learning_rate_multiplier` applies to adamw only (Adafactor's updates "
                         "are already relative to each parameter). Received: optimizer='adafactor', "
                         f"state_learning_rate_multiplier={state_learning_rate_multiplier}")
    warmup = warmup_steps if warmup_steps is not None else min(1000, max(1, steps // 10))
    if name == "adafactor":
        schedule = InverseSquareRootDecay(warmup, learning_rate or 1.0)
        return keras.optimizers.Adafactor(
            learning_rate=schedule, beta_2_decay=-0.8, relative_step=False,
            global_clipnorm=clip_norm,
        )
    peak = learning_rate or 1e-3
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=peak, warmup_steps=warmup,
        decay_steps=max(1, steps - warmup), alpha=0.1,
    )
    if state_learning_rate_multiplier != 1.0:
        return GroupedAdamW({STATE_PATH: state_learning_rate_multiplier}, learning_rate=schedule,
                            weight_decay=weight_decay, global_clipnorm=clip_norm)
    return keras.optimizers.AdamW(schedule, weight_decay=weight_decay, global_clipnorm=clip_norm)

