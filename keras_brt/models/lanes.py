"""The carried lanes of the stateful causal LM: one owner for reading, resetting and
writing back the rows of a step.

A lane is one batch row and its document stream. The model keeps the state of every
lane of the global batch in non-trainable variables (one set for training, one for
evaluation and prediction), plus a `reset` flag per lane. A step (the model's own
call, or the per-replica XLA step of `replica_xla`) does the same three things,
written here once:

1. `read`: this replica's rows of every lane, the rows to restart (the lane's flag
   or the batch's `start_of_sequence`), and the carried state as a constant input
   (no gradient crosses batches);
2. the forward pass, from that state;
3. `write`: the new rows, gathered over the replicas in replica order, stored back,
   with every flag cleared.

Under a multi-replica tf.distribute strategy each replica holds rows
`[r * b, (r + 1) * b)` of the global batch (see `replicas`); elsewhere there is
one replica and the helpers of `replicas` are the identity.
"""

from keras import ops

from keras_brt.distribute import replicas

INPUT_KEYS = ("token_ids", "start_of_sequence", "padding_mask")
MODES = ("train", "eval")  # training; evaluation and prediction


def create(layer, state_shapes, mode):
    """The lane variables of `mode` on `layer`: one per state entry (`state_shapes`,
    name -> shape with the batch first) and the `(batch,)` reset flags, named
    `{mode}_lanes_{name}`. Lanes start flagged, so their first batch reads the learned
    initial state (which may change during training) rather than zeros. Mirrored
    under a strategy, with one replica's value kept (every replica writes the same)."""
    variables = {
        name: layer.add_weight(shape=shape, initializer="zeros", trainable=False, autocast=False,
                               aggregation="only_first_replica", name=f"{mode}_lanes_{name}")
        for name, shape in state_shapes.items()
    }
    batch = next(iter(state_shapes.values()))[0]
    variables["reset"] = layer.add_weight(shape=(batch,), initializer="ones", dtype="int32",
                                          trainable=False, aggregation="only_first_replica",
                                          name=f"{mode}_lanes_reset")
    return variables


def unpack_inputs(inputs):
    """`(token_ids, start_of_sequence, padding_mask)` of a stateful input: an array of
    token ids, or a dict holding `token_ids` and optionally the other two."""
    if isinstance(inputs, dict):
        if "token_ids" not in inputs:
            raise ValueError(
                "A dict input must hold `token_ids` (and optionally `start_of_sequence`, "
                f"`padding_mask`). Received keys: {sorted(inputs)}"
            )
        unknown = set(inputs) - set(INPUT_KEYS)
        if unknown:
            raise ValueError(
                "Unknown input keys; expected `token_ids`, `start_of_sequence`, "
                f"`padding_mask`. Received: {sorted(unknown)}"
            )
        return inputs["token_ids"], inputs.get("start_of_sequence"), inputs.get("padding_mask")
    return inputs, None, None


def with_rows(tensor, rows):
    """Gives `tensor` the static batch size `rows` (multi-worker datasets lose it)."""
    if tensor is None or tensor.shape[0] is not None:
        return tensor
    return ops.reshape(tensor, (rows,) + tuple(-1 if d is None else d for d in tensor.shape[1:]))


def rows_per_replica(lane_batch_size, context=None, count=None):
    """The lanes one replica carries (of `count` replicas, or those of the replica
    `context`); the global batch must be a positive multiple of the replicas."""
    count = replicas.num_replicas(context) if count is None else count
    if lane_batch_size < 1 or lane_batch_size % count:
        raise ValueError(
            f"The global batch size must be a positive multiple of the {count} replicas (one "
            f"lane per batch row). Received: global_batch_size={lane_batch_size}"
        )
    return lane_batch_size // count


def read(variables, context, rows, start_of_sequence=None):
    """This replica's rows of the lanes in `variables` (name -> variable, with `reset`).

    Returns:
        `(state, reset)`: the carried state, a constant (`stop_gradient`), and the
        `(rows,)` booleans of the rows that restart from the initial state.
    """
    lanes = {
        name: replicas.local_rows(ops.convert_to_tensor(variable), context, rows)
        for name, variable in variables.items()
    }
    reset = lanes.pop("reset") > 0  # (rows,)
    if start_of_sequence is not None:
        reset = ops.logical_or(reset, ops.cast(start_of_sequence, "bool"))  # (rows,)
    return {name: ops.stop_gradient(value) for name, value in lanes.items()}, reset


def write(variables, new_state, context, rows):
    """Stores this step's new rows (gathered over the replicas) and clears every flag."""
    new_state = {**new_state, "reset": ops.zeros((rows,), "int32")}
    for name, variable in variables.items():
        value = replicas.global_rows(ops.stop_gradient(new_state[name]), context)
        variable.assign(ops.cast(value, variable.dtype))
