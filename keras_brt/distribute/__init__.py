"""Distribution: everything that runs the model on several replicas, in one place.

- `strategies` (TensorFlow): `get_strategy`, `strategy_scope`, `distribute_lanes`,
  `per_replica_batch_size` and the local multi-worker launcher, re-exported here
  (`keras_brt.distribute.get_strategy(...)`);
- `replicas`: each replica's rows of the carried lanes inside a step, the replicas'
  agreement on skipping a non-finite update, and the fixes around Keras's trainer under
  `tf.distribute` (building metrics from the dataset's spec, multi-worker logs);
- `replica_xla`: XLA-compiled training under MirroredStrategy and
  MultiWorkerMirroredStrategy, where Keras's own `jit_compile=True` fails;
- `jax_distribution` (JAX, no TensorFlow): `data_parallel()`, a `keras.distribution` that
  replicates the weights and shards the batch and the carried lanes over the devices,
  and `lane_layout_map` for a LayoutMap of one's own; re-exported here.

The modeling code imports `replicas` (inert, and free of TensorFlow, off the TensorFlow
backend); the strategy names load TensorFlow on first use, so `import keras_brt` needs no
TensorFlow under the JAX backend.
"""

import importlib

_STRATEGY_NAMES = ("STRATEGIES", "get_strategy", "strategy_scope", "per_replica_batch_size",
                   "distribute_lanes", "free_ports", "launch_local_workers", "main")


_DATA_PARALLEL_NAMES = ("data_parallel", "lane_layout_map")


def __getattr__(name):
    if name in _STRATEGY_NAMES:
        return getattr(importlib.import_module("keras_brt.distribute.strategies"), name)
    if name in _DATA_PARALLEL_NAMES:
        return getattr(importlib.import_module("keras_brt.distribute.jax_distribution"), name)
    raise AttributeError(f"module 'keras_brt.distribute' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_STRATEGY_NAMES) + list(_DATA_PARALLEL_NAMES))


__all__ = list(_STRATEGY_NAMES) + list(_DATA_PARALLEL_NAMES)
