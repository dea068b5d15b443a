"""FlatBlockRecurrentCell: the block cell inside plain keras.layers.RNN, with integer sizes."""

import keras
import numpy as np
import pytest

from keras_brt.layers import BlockRecurrentCell, FlatBlockRecurrentCell

B, N, W, D, H, K, S = 4, 3, 8, 32, 2, 16, 4


def _cell(**kwargs):
    return BlockRecurrentCell(hidden_dim=D, num_heads=H, head_dim=K, block_size=W,
                              num_state_vectors=S, **kwargs)


def _blocks(batch=B, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, N, W, D)).astype("float32")


def test_plain_rnn_gets_every_shape_and_computes_the_block_cell():
    """Functional model, return_state and initial_state: the symbolic shapes are the real
    ones, and the outputs and states equal the wrapped cell called block by block."""
    cell = _cell()
    inputs = keras.Input((N, W, D))
    flat = keras.layers.Reshape((N, W * D))(inputs)
    rnn = keras.layers.RNN(FlatBlockRecurrentCell(cell), return_sequences=True, return_state=True)
    outputs, state, keys, values = rnn(flat)
    assert tuple(outputs.shape) == (None, N, W * D)
    assert [tuple(t.shape) for t in (state, keys, values)] == [
        (None, S * D), (None, W * H * K), (None, W * H * K)]
    model = keras.Model(inputs, [keras.layers.Reshape((N, W, D))(outputs), state, keys, values])
    x = _blocks()
    got = [np.asarray(t) for t in model(x)]
    assert got[0].shape == (B, N, W, D)
    states = cell.get_initial_state(batch_size=B)
    for n in range(N):
        y, states = cell(x[:, n], states)
        np.testing.assert_allclose(got[0][:, n], np.asarray(y), atol=1e-5)
    for flat_value, value in zip(got[1:], states):
        np.testing.assert_allclose(flat_value, np.asarray(value).reshape(B, -1), atol=1e-5)
    # initial_state: a second call continuing from the first equals one call over 2N blocks.
    longer = keras.layers.RNN(FlatBlockRecurrentCell(cell), return_sequences=True)
    x2 = _blocks(seed=1)
    continued = np.asarray(longer(x2.reshape(B, N, W * D), initial_state=got[1:]))
    whole = np.asarray(longer(np.concatenate([x, x2], 1).reshape(B, 2 * N, W * D)))
    np.testing.assert_allclose(continued, whole[:, N:], atol=1e-4)


@pytest.mark.slow
def test_stacked_flat_cells_train_under_xla_and_round_trip(tmp_path):
    """Two stacked recurrent layers in a Functional model (the second starting from the
    first's final state) and in a Sequential one: compiled fit lowers the loss on both
    backends, and a .keras file reloads to identical predictions."""
    inputs = keras.Input((N, W, D))
    x = keras.layers.Reshape((N, W * D))(inputs)
    x, *states = keras.layers.RNN(FlatBlockRecurrentCell(_cell()), return_sequences=True,
                                  return_state=True)(x)
    x = keras.layers.RNN(FlatBlockRecurrentCell(_cell(dropout=0.1)), return_sequences=True)(
        x, initial_state=states)
    outputs = keras.layers.Dense(D)(keras.layers.Reshape((N, W, D))(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse", jit_compile=True)
    data = _blocks(batch=8)
    history = model.fit(data, data, batch_size=8, epochs=4, verbose=0)
    assert history.history["loss"][-1] < 0.9 * history.history["loss"][0]
    path = str(tmp_path / "flat.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(reloaded.predict(data, verbose=0), model.predict(data, verbose=0))

    sequential = keras.Sequential([
        keras.Input((N, W * D)),
        keras.layers.RNN(FlatBlockRecurrentCell(_cell()), return_sequences=True),
        keras.layers.RNN(FlatBlockRecurrentCell(_cell())),
    ])
    assert sequential.output_shape == (None, W * D)
    sequential.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse", jit_compile=True)
    target = data[:, -1].reshape(8, W * D)
    history = sequential.fit(data.reshape(8, N, W * D), target, batch_size=8, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


@pytest.mark.slow
@pytest.mark.parametrize("num_samples, batch_size, cell_kwargs", [
    (3, 2, {}),
    (2, None, {"gate": "lstm", "state_mlp": "dual"}),
], ids=["last_batch_partial", "fewer_than_default_batch_size"])
def test_partial_batches_train_under_xla(num_samples, batch_size, cell_kwargs):
    """A batch smaller than `batch_size` (the last of 3 samples at 2, or 2 samples at Keras's
    default 32) has an unknown batch size when TensorFlow traces it: compiled fit still
    trains (issue 33: XLA refused the loop's gradient), and the partial batch's rows equal
    the same rows computed in one full batch. The LSTM gate and the dual state MLP bring
    the cell's remaining Dense layers into the loop."""
    inputs = keras.Input((N, W * D))
    cell = FlatBlockRecurrentCell(_cell(**cell_kwargs))
    model = keras.Model(inputs, keras.layers.RNN(cell, return_sequences=True)(inputs))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", jit_compile=True)
    x = _blocks(batch=num_samples).reshape(num_samples, N, W * D)
    before = [np.array(v) for v in model.trainable_weights]
    history = model.fit(x, x, batch_size=batch_size, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    unchanged = [v.path for v, b in zip(model.trainable_weights, before)
                 if np.array_equal(b, np.asarray(v))]
    assert not unchanged
    partial = model.predict(x, batch_size=batch_size, verbose=0)  # compiled, partial batch
    np.testing.assert_allclose(partial, np.asarray(model(x)), atol=1e-5)  # one full batch


def test_bad_cells_and_step_sizes_are_named():
    with pytest.raises(ValueError, match=r"`cell` must be a BlockRecurrentCell. Received: cell=Dense"):
        FlatBlockRecurrentCell(keras.layers.Dense(3))
    rnn = keras.layers.RNN(FlatBlockRecurrentCell(_cell()))
    with pytest.raises(ValueError, match=r"block_size \* hidden_dim = 256.*inputs.shape=\(None, 100\)"):
        rnn(keras.Input((N, 100)))
