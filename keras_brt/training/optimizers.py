"""The paper's optimiser recipe and the usual AdamW alternative."""

import keras
from keras import ops

OPTIMIZERS = ("adafactor", "adamw")


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


def make_optimizer(name="adamw", steps=10_000, learning_rate=None, warmup_steps=None,
                   clip_norm=1.0, weight_decay=0.01):
    """Returns a configured optimizer.

    - `"adafactor"`: the paper's recipe: Adafactor (factored second moments,
      updates scaled by the parameters' RMS) with `InverseSquareRootDecay`
      (1000 warm-up steps; `learning_rate` scales the curve, default 1.0).
      Keras's Adafactor keeps no first moment; meliad's used beta_1 = 0.9.
    - `"adamw"`: AdamW with linear warm-up then cosine decay to 10% of the
      peak `learning_rate` (default 1e-3).

    Both clip the global gradient norm at `clip_norm` (None: no clipping).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}. Received: optimizer={name!r}")
    if steps < 1:
        raise ValueError(f"`steps` must be at least 1. Received: steps={steps}")
    if name == "adafactor":
        schedule = InverseSquareRootDecay(warmup_steps or 1000, learning_rate or 1.0)
        return keras.optimizers.Adafactor(
            learning_rate=schedule, beta_2_decay=-0.8, relative_step=False,
            global_clipnorm=clip_norm,
        )
    peak = learning_rate or 1e-3
    warmup = warmup_steps if warmup_steps is not None else min(1000, max(1, steps // 10))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=peak, warmup_steps=warmup,
        decay_steps=max(1, steps - warmup), alpha=0.1,
    )
    return keras.optimizers.AdamW(schedule, weight_decay=weight_decay, global_clipnorm=clip_norm)

