"""A training step whose loss or new weights are not finite is never applied.

The guard lives on the device, inside the compiled step, so that `fit` keeps
dispatching steps back to back (the host never waits for a step to learn
whether it was finite):

1. the step computes its update as usual, then one summed finiteness check
   (a NaN or an infinity anywhere makes the sum non-finite) decides whether
   it is kept;
2. a step that is not kept leaves every variable as it was (weights,
   optimizer, carried lanes, metrics) and sets the model's `skipped_update`
   flag; while the flag is set, every later step is not applied either, so
   the model stays exactly as it was after the last good step;
3. the host reads the flag only where it must: `NonFiniteUpdateStop` every
   `check_every` steps, at each epoch's end and at the end of training (added
   first by the causal LM's `fit`, so it stops training before any later
   callback, a checkpoint, sees the epoch), `fit` itself once it returns,
   `train_on_batch` after its step (which waits for the device anyway), and
   keras_brt's own `RunCheckpoint` before it saves. It raises a
   `FloatingPointError` naming the step and clears the flag.

Reading the flag (or any variable) between steps makes the JAX trainer wait
for the step and copy its whole state back to the model (Keras's
`jax_state_sync`); doing that every step made `fit` 1.1-1.6x slower on a GPU
(bench/results/NOTES.md, issue 33).
"""

import keras
from keras import ops

FLAG_NAME = "skipped_update"


def create_flag(model):
    """The model's `(,)` int32 flag: 1 once a step was not applied. Not saved with the
    weights (see the causal LM's `save_own_variables`)."""
    return model.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False,
                            aggregation="only_first_replica", name=FLAG_NAME)


def finite(loss, values):
    """True when `loss` and every tensor in `values` are finite: one sum, since a NaN or
    an infinity anywhere makes the sum non-finite."""
    total = ops.sum(ops.cast(loss, "float32"))
    for value in values:
        total = total + ops.sum(ops.cast(value, "float32"))
    return ops.isfinite(total)


def jax_step(model, step, state, *args, **kwargs):
    """JAX: `step(state, ...)` (Keras's `train_step`) applied only when it is finite and
    no earlier step of this run was skipped; otherwise the old state with the model's
    `skipped_update` flag set."""
    logs, new_state = step(state, *args, **kwargs)
    trainable = new_state[0]
    index = next(i for i, v in enumerate(model.non_trainable_variables)
                 if v is model.skipped_update)
    keep = ops.logical_and(finite(logs["loss"], trainable), ops.equal(state[1][index], 0))
    chosen = ops.cond(keep, lambda: new_state, lambda: state)
    non_trainable = list(chosen[1])
    non_trainable[index] = ops.cast(ops.logical_not(keep), "int32")
    return logs, (chosen[0], non_trainable, *chosen[2:])


def tensorflow_step(model, step, agree):
    """TensorFlow: runs `step()` (which assigns the variables), then puts back every
    variable it changed unless the step was finite and no earlier step was skipped (the
    model's `skipped_update` flag). `agree` makes the replicas of a strategy decide alike."""
    flag = model.skipped_update
    guarded = [v for v in model.trainable_variables + model.non_trainable_variables
               + model.optimizer.variables if v is not flag]
    before = [ops.copy(v.value) for v in guarded]
    logs = step()
    keep = agree(ops.logical_and(finite(logs["loss"], model.trainable_variables),
                                 ops.equal(flag.value, 0)))
    # No control flow here: under a strategy, assignments inside a cond would be a
    # cross-replica merge inside control flow, which TensorFlow refuses.
    for variable, old in zip(guarded, before):
        variable.assign(ops.where(keep, variable.value, old))
    flag.assign(ops.cast(ops.logical_not(keep), "int32"))
    return logs


def raise_if_skipped(model):
    """Raises a `FloatingPointError` if a step of `model` was not applied since the flag
    was last cleared, and clears it (the model is as it was after the last good step)."""
    flag = getattr(model, "skipped_update", None)
    if flag is None or not int(flag.numpy()):
        return
    flag.assign(0)
    step = int(model.optimizer.iterations.numpy())
    raise FloatingPointError(
        f"The loss or the update of training step {step + 1} was not finite; it was not "
        f"applied, nor any later step: the weights, the optimizer and the carried state are "
        f"those after step {step}. Training stopped; lower the learning rate or check the data "
        "(an earlier checkpoint is untouched)."
    )


class NonFiniteUpdateStop(keras.callbacks.Callback):
    """Stops `fit` with a `FloatingPointError` once a training step was not applied.

    The causal LM's `train_step` never applies a step whose loss or new weights
    are not finite, nor any step after it until this check (see
    `keras_brt.models.update_guard`), so the model stays as it was after the
    last good step however late the check comes. The check makes the host
    wait for the device, so it runs every `check_every` steps, at each epoch's
    end and at the end of training, not after every step. `fit` adds one first
    in the callback list by itself (so it stops before a later callback saves
    the epoch); pass your own to choose `check_every`.

    Args:
        check_every: steps between checks inside an epoch (1 stops at the bad
            step itself, at the cost of a host-device round trip per step).

    Example:

    ```python
    lm.fit(dataset, epochs=3, callbacks=[NonFiniteUpdateStop(check_every=10),
                                         keras.callbacks.ModelCheckpoint("lm.keras")])
    ```
    """

    def __init__(self, check_every=100):
        super().__init__()
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"`check_every` must be a positive integer. Received: "
                             f"check_every={check_every!r}")
        self.check_every = check_every

    # Only `*_begin` and epoch hooks: a callback with `on_train_batch_end` would make Keras
    # call every callback synchronously after every step.
    def on_train_batch_begin(self, batch, logs=None):
        if batch and batch % self.check_every == 0:
            raise_if_skipped(self.model)

    def on_epoch_end(self, epoch, logs=None):
        raise_if_skipped(self.model)

    def on_train_end(self, logs=None):
        raise_if_skipped(self.model)
