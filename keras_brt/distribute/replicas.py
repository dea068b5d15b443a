"""Carried lanes under tf.distribute: each replica carries the rows of its own lanes.

The lane variables hold the state of every lane of the global batch and are the
same on every replica (mirrored). A distributed dataset hands replica r the rows
`[r * b, (r + 1) * b)` of each global batch (b = global batch / replicas), so
replica r reads those rows of the lanes, and after the step the replicas'
new rows are all-gathered in replica order, giving every replica the same
full value to store (variables use `only_first_replica` aggregation). The
result is the single-device computation, exactly, with no per-replica state
that a checkpoint could lose. Only the TensorFlow backend has replica contexts;
on others these helpers are inert and TensorFlow is never imported.
"""

import contextlib

import keras


def replica_context():
    """The `tf.distribute` replica context of a multi-replica step, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def multi_replica_strategy():
    """True inside the scope of a tf.distribute strategy with several replicas, except TPUs

    (TPUStrategy compiles everything with XLA by itself)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return False
    strategy = tf.distribute.get_strategy()
    return strategy.num_replicas_in_sync > 1 and not isinstance(
        strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)
    )


def all_replicas_agree(flag):
    """`flag` (a boolean scalar) and-ed over the replicas of a multi-replica step, so that
    every replica takes the same branch; the flag itself elsewhere."""
    context = replica_context()
    if context is None:
        return flag
    import tensorflow as tf

    disagreeing = context.all_reduce("SUM", 1.0 - tf.cast(flag, tf.float32))  # SUM and MEAN only
    return disagreeing == 0


def multi_worker_logs(logs):
    """Works around Keras 3.15 under MultiWorkerMirroredStrategy, which reduces the
    step's scalar logs with `strategy.reduce("MEAN", value, axis=0)` and fails on
    scalars: shape-(1,) logs reduce to the same mean, as scalars."""
    if keras.backend.backend() != "tensorflow":
        return logs
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.extended._in_multi_worker_mode()
    )
    if not multi_worker:
        return logs
    return {k: tf.reshape(v, (1,)) if len(v.shape) == 0 else v for k, v in logs.items()}


def num_replicas(context):
    return 1 if context is None else context.num_replicas_in_sync


def local_rows(value, context, rows):
    """This replica's `rows` rows of a global-batch tensor."""
    if context is None:
        return value
    start = context.replica_id_in_sync_group * rows
    return value[start : start + rows]


def global_rows(value, context):
    """Concatenates every replica's rows in replica order."""
    if context is None:
        return value
    return context.all_gather(value, axis=0)


def strategy_scope(strategy):
    """`strategy.scope()`, or a no-op context when `strategy` is None (re-exported as
    `keras_brt.distribute.strategy_scope`; imports no TensorFlow)."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def model_scope(model):
    """The distribution scope the model was created in (a no-op off TensorFlow)."""
    return strategy_scope(getattr(model, "distribute_strategy", None))


def metrics_build_batch(model, iterator=None, data_batch=None):
    """`(iterator, data_batch)` for Keras's `_maybe_symbolic_build`, which builds a
    model's metrics before its first step.

    Keras 3.15's TensorFlow trainer, under a tf.distribute strategy, builds them from a
    real batch that it pulls out of the training iterator (that batch is then never
    trained on, so the lanes would skip a segment) and MEAN-reduces it across replicas
    (which fails on boolean inputs such as `start_of_sequence`). This gives a batch of
    zeros shaped like the dataset's element spec instead, and no iterator; other cases
    pass through unchanged.
    """
    adapter = getattr(iterator, "data_adapter", None)
    if data_batch is not None or adapter is None or not hasattr(adapter, "get_tf_dataset"):
        return iterator, data_batch
    # A distributed dataset has one spec per replica: any of them will do.
    spec = keras.tree.map_structure(
        lambda s: s._value_specs[0] if hasattr(s, "_value_specs") else s,
        adapter.get_tf_dataset().element_spec,
    )
    # Multi-worker datasets leave the per-replica batch unknown: it is this replica's
    # share of the lanes.
    strategy = getattr(model, "distribute_strategy", None)
    lanes = getattr(model, "lane_batch_size", None)
    rows = 1 if lanes is None else lanes // max(1, getattr(strategy, "num_replicas_in_sync", 1))
    specs = keras.tree.flatten(spec)
    shapes = [tuple(rows if d is None else d for d in s.shape) for s in specs]
    if any(None in shape for shape in shapes):
        return iterator, data_batch
    zeros = [keras.ops.zeros(shape, s.dtype.name) for shape, s in zip(shapes, specs)]
    return None, keras.tree.pack_sequence_as(spec, zeros)
