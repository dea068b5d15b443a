"""Data parallelism on the JAX backend through `keras.distribution`, lanes kept with their rows.

Keras's `keras.distribution.DataParallel` replicates every variable. That is right for
the weights, but the carried lanes are batch rows of state: replicated, each step
gathers the new state of every row onto every device. `data_parallel()` is Keras's
`ModelParallel` with a `LayoutMap` that shards only the lane variables along the batch
axis and replicates everything else, so it trains exactly like `DataParallel` while each
device keeps the state of its own rows. No TensorFlow is imported.
"""

import keras

# The lane variables of `keras_brt.models.lanes.create`: `{train,eval}_lanes_{name}`.
LANE_VARIABLES = r"(.*/)?(train|eval)_lanes_[^/]*"  # LayoutMap full-matches paths


def lane_layout_map(device_mesh, batch_dim_name="batch", layout_map=None):
    """A `keras.distribution.LayoutMap` that shards the carried lanes along `batch_dim_name`.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh` with an axis `batch_dim_name`.
        batch_dim_name: the mesh axis the batch (and so the lanes) is split over.
        layout_map: an existing `LayoutMap` (e.g. of a model-parallel layout) to add
            the lanes' entry to; default: a new one, under which every other
            variable is replicated.

    Returns:
        The layout map.
    """
    if batch_dim_name not in device_mesh.axis_names:
        raise ValueError(
            f"`batch_dim_name` must be an axis of the device mesh {list(device_mesh.axis_names)}. "
            f"Received: batch_dim_name={batch_dim_name!r}"
        )
    layout_map = keras.distribution.LayoutMap(device_mesh) if layout_map is None else layout_map
    layout_map[LANE_VARIABLES] = (batch_dim_name,)  # the first (batch) axis; the rest whole
    return layout_map


def data_parallel(devices=None, batch_dim_name="batch"):
    """Data parallelism for a stateful causal LM on JAX, each device carrying its rows' lanes.

    Every weight is replicated, every batch is split over the devices along its
    rows, and so are the carried lanes: row i of the state stays on the device
    that trains row i. The global batch size must be a multiple of the number of
    devices. Set it with `keras.distribution.set_distribution(...)` before the
    model is created.

    Args:
        devices: the devices, e.g. `keras.distribution.list_devices("gpu")`
            (default: every device JAX sees).
        batch_dim_name: the name of the mesh axis.

    Returns:
        A `keras.distribution.ModelParallel`.

    Example:

    ```python
    keras.distribution.set_distribution(keras_brt.distribute.data_parallel())
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM.from_preset("tiny_rec_fixed_skip")
    lm.compile(optimizer="adamw", jit_compile=True)
    lm.fit(dataset)  # batches of 8 rows on 2 devices: 4 rows and their lanes on each
    ```
    """
    if keras.backend.backend() != "jax":
        raise ValueError(
            "`keras.distribution` runs on the JAX backend; under TensorFlow use "
            "keras_brt.distribute.get_strategy (tf.distribute). Received: "
            f"backend={keras.backend.backend()!r}"
        )
    devices = keras.distribution.list_devices() if devices is None else list(devices)
    mesh = keras.distribution.DeviceMesh((len(devices),), [batch_dim_name], devices)
    return keras.distribution.ModelParallel(
        layout_map=lane_layout_map(mesh, batch_dim_name), batch_dim_name=batch_dim_name
    )


def device_count(distribution):
    """How many devices `distribution` splits the batch over (1 for None)."""
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    return int(mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)])
