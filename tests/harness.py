"""A port of Keras's `run_layer_test` harness (keras.src.testing is private).

For one layer class and one set of inputs it checks, in Keras's order:
1. `build()` from shapes sets `built` and creates the expected weights and seed
   generators;
2. a symbolic call on `KerasTensor`s gives the same shapes and dtypes as
3. an eager call on real data, which gives the expected shapes;
4. one compiled (`jit_compile=True`) training step changes the trainable weights
   and leaves the layer's own non-trainable weights alone;
5. under `mixed_bfloat16` float outputs come out in bfloat16 (or the documented
   float32 island) while every weight stays float32, sublayers included;
6. the config survives JSON and `from_config`, and the revived layer, given the
   same weights, computes the same outputs.
"""

import json

import keras
import numpy as np
from keras import ops


def _shapes(tree):
    return keras.tree.map_structure(lambda x: tuple(x.shape), tree)


def _first_float(outputs):
    return next(x for x in keras.tree.flatten(outputs) if "float" in str(x.dtype))


def _seed_generators(layer):
    found = []
    for sub in layer._flatten_layers(include_self=True):
        found += [v for v in sub.__dict__.values() if isinstance(v, keras.random.SeedGenerator)]
    return len(found)


class TrainingWrapper(keras.Model):
    def __init__(self, layer, kwargs):
        super().__init__()
        self.inner = layer
        self.kwargs = kwargs

    def call(self, inputs, training=False):
        out = ops.cast(_first_float(self.inner(*inputs, **self.kwargs)), "float32")
        return ops.reshape(ops.mean(out), (1, 1))


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    expected_num_trainable_weights,
    expected_num_non_trainable_weights=0,
    expected_num_seed_generators=0,
    call_kwargs=None,
    build_shapes=None,
    float32_outputs=False,
    run_training_check=True,
):
    """Runs the checks above.

    `input_data` is a tuple of positional arguments (arrays or lists of arrays);
    `build_shapes` are the `build()` arguments when they are not the shapes of
    `input_data` (a recurrent cell is built from its step input only).
    """
    call_kwargs = call_kwargs or {}

    # 1. Build from shapes.
    layer = layer_cls(**init_kwargs)
    layer.build(*(build_shapes or [tuple(x.shape) for x in input_data]))
    assert layer.built
    assert len(layer.trainable_weights) == expected_num_trainable_weights, [
        v.path for v in layer.trainable_weights
    ]
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights
    assert _seed_generators(layer) == expected_num_seed_generators

    # 2-3. Symbolic and eager calls agree with each other and with expectations.
    symbolic_inputs = keras.tree.map_structure(
        lambda x: keras.KerasTensor(x.shape, dtype=x.dtype), list(input_data)
    )
    symbolic = layer(*symbolic_inputs, **call_kwargs)
    eager = layer(*input_data, **call_kwargs)
    assert _shapes(symbolic) == _shapes(eager), (_shapes(symbolic), _shapes(eager))
    assert _shapes(eager) == expected_output_shape, (_shapes(eager), expected_output_shape)
    assert [str(x.dtype) for x in keras.tree.flatten(symbolic)] == [
        keras.backend.standardize_dtype(x.dtype) for x in keras.tree.flatten(eager)
    ]

    # 4. One compiled training step moves the trainable weights.
    if run_training_check:
        model = TrainingWrapper(layer_cls(**init_kwargs), call_kwargs)
        inputs = tuple(input_data)
        model(inputs)
        before = [v.numpy() for v in model.trainable_weights]
        non_trainable = [v.numpy() for v in model.inner.non_trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
        model.train_on_batch(inputs, np.ones((1, 1), "float32"))
        moved = [not np.allclose(a, v.numpy()) for a, v in zip(before, model.trainable_weights)]
        assert any(moved), "a compiled training step changed no trainable weight"
        for a, v in zip(non_trainable, model.inner.non_trainable_weights):
            np.testing.assert_array_equal(a, v.numpy())

    # 5. Mixed precision: bfloat16 compute, float32 variables, policy on sublayers.
    mixed = layer_cls(**{**init_kwargs, "dtype": "mixed_bfloat16"})
    outputs = mixed(*input_data, **call_kwargs)
    for x in keras.tree.flatten(outputs):
        if "float" in str(x.dtype):
            expected = "float32" if float32_outputs else "bfloat16"
            assert keras.backend.standardize_dtype(x.dtype) == expected, x.dtype
    for v in mixed.weights:
        if "float" in v.dtype:
            assert v.dtype == "float32", (v.path, v.dtype)
    for sub in mixed._flatten_layers(include_self=False):
        assert sub.dtype_policy.name == "mixed_bfloat16", (sub.name, sub.dtype_policy.name)

    # 6. Serialization: config through JSON, same outputs from the same weights.
    config = json.loads(json.dumps(layer.get_config()))
    revived = layer_cls.from_config(config)
    assert revived.get_config() == layer.get_config()
    revived.build(*(build_shapes or [tuple(x.shape) for x in input_data]))
    revived.set_weights(layer.get_weights())
    for a, b in zip(
        keras.tree.flatten(layer(*input_data, **call_kwargs)),
        keras.tree.flatten(revived(*input_data, **call_kwargs)),
    ):
        np.testing.assert_allclose(np.array(a, "float32"), np.array(b, "float32"), atol=1e-6)
    serialized = keras.saving.serialize_keras_object(layer)
    assert type(keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))) is layer_cls
    return layer
