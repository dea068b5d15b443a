"""BlockRecurrentCell and BlockRecurrentRNN: the paper's math and the Keras RNN protocol."""

import json

import keras
import numpy as np
import pytest
from keras import ops

from keras_brt.layers import BlockRecurrentCell, BlockRecurrentRNN
from keras_brt.layers.gates import ChronoInitializer
from tests import reference
from tests.harness import run_layer_test

CONFIG = dict(hidden_dim=16, num_heads=2, head_dim=4, block_size=4, num_state_vectors=3, intermediate_dim=24)
B, N, W, D, S, H, K = 2, 3, 4, 16, 3, 2, 4


def _blocks(seed=0, batch=B, blocks=N):
    return np.random.default_rng(seed).normal(size=(batch, blocks, W, D)).astype("float32")


def _states(cell, batch=B, seed=1):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(batch, S, D)).astype("float32"),
        reference.l2(rng.normal(size=(batch, W, H, K))).astype("float32"),
        rng.normal(size=(batch, W, H, K)).astype("float32"),
    ]


@pytest.mark.parametrize(
    "gate,state_mlp,num_weights",
    [("fixed", "skip", 17), ("lstm", "single", 21), ("lstm", "dual", 27)],
)
def test_cell_harness(gate, state_mlp, num_weights):
    x = _blocks()[:, 0]
    run_layer_test(
        BlockRecurrentCell,
        {**CONFIG, "gate": gate, "state_mlp": state_mlp, "dropout": 0.1},
        (x, _states(None)),
        expected_output_shape=((B, W, D), [(B, S, D), (B, W, H, K), (B, W, H, K)]),
        expected_num_trainable_weights=num_weights,
        expected_num_seed_generators=2,  # the cell's masks + the MLP's Dropout layer
        build_shapes=[(None, W, D)],
    )


@pytest.mark.parametrize("gate", ["fixed", "lstm"])
@pytest.mark.parametrize("state_mlp", ["skip", "single", "dual"])
def test_rnn_over_blocks_matches_token_by_token_reference(gate, state_mlp):
    """keras.layers.RNN + the cell == the paper's equations, block after block."""
    cell = BlockRecurrentCell(**CONFIG, gate=gate, state_mlp=state_mlp)
    x = _blocks()
    initial = _states(cell)
    outputs, state, keys, values = keras.layers.RNN(cell, return_sequences=True, return_state=True)(
        x, initial_state=initial
    )
    for row in range(B):
        s, k, v = (initial[0][row], initial[1][row], initial[2][row])
        for n in range(N):
            y, s, k, v = reference.cell_step(cell, x[row, n].astype("float64"), s, k, v)
            np.testing.assert_allclose(np.asarray(outputs)[row, n], y, atol=3e-4)
        np.testing.assert_allclose(np.asarray(state)[row], s, atol=3e-4)
        np.testing.assert_allclose(np.asarray(keys)[row], k, atol=1e-5)
        np.testing.assert_allclose(np.asarray(values)[row], v, atol=1e-4)


def test_initial_state_is_learned_state_and_empty_cache():
    cell = BlockRecurrentCell(**CONFIG)
    cell.build((None, W, D))
    state, keys, values = cell.get_initial_state(batch_size=2)
    np.testing.assert_allclose(state[1], cell.initial_state.numpy())
    assert np.abs(cell.initial_state.numpy()).max() > 0  # learned, not zeros
    assert not np.any(keys) and not np.any(values)
    rnn = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    x = _blocks()
    default = rnn(x)
    explicit = rnn(x, initial_state=cell.get_initial_state(batch_size=B))
    for a, b in zip(default, explicit):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_rnn_equals_cell_called_block_by_block():
    cell = BlockRecurrentCell(**CONFIG)
    x = _blocks()
    outputs, *final = keras.layers.RNN(cell, return_sequences=True, return_state=True)(x)
    states = cell.get_initial_state(batch_size=B)
    for n in range(N):
        y, states = cell(x[:, n], states)
        np.testing.assert_allclose(outputs[:, n], y, atol=1e-5)
    for a, b in zip(final, states):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_block_outputs_are_causal_and_the_state_carries_block_zero():
    cell = BlockRecurrentCell(**CONFIG)
    rnn = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    x = _blocks(blocks=5)
    base = np.asarray(rnn(x)[0])
    changed = x.copy()
    changed[:, 0, 1] += 1.0  # token 1 of block 0
    out = np.asarray(rnn(changed)[0])
    np.testing.assert_array_equal(out[:, 0, :1], base[:, 0, :1])
    # Blocks 2..4 are beyond the window of block 0: only the state reaches them.
    assert np.abs(out[:, 4] - base[:, 4]).max() > 1e-4


class BlockModel(keras.Model):
    """A subclassed model around plain keras.layers.RNN (Functional use: FlatBlockRecurrentCell)."""

    def __init__(self):
        super().__init__()
        self.rnn = keras.layers.RNN(BlockRecurrentCell(**CONFIG), return_sequences=True, return_state=True)

    def call(self, x, training=False):
        outputs, state, keys, values = self.rnn(x, training=training)
        return ops.mean(outputs, axis=(1, 2)) + ops.mean(state, axis=1)


@pytest.mark.slow
def test_plain_rnn_fits_under_jit_compile():
    model = BlockModel()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=True)
    x = _blocks(batch=8)
    y = np.ones((8, D), "float32")
    history = model.fit(x, y, batch_size=4, epochs=5, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]


def test_block_recurrent_rnn_symbolic_shapes_and_equivalence():
    cell = BlockRecurrentCell(**CONFIG)
    layer = BlockRecurrentRNN(cell, return_state=True)
    tokens = keras.Input((N * W, D))
    symbolic = layer(tokens)
    assert [tuple(t.shape) for t in symbolic] == [
        (None, N * W, D), (None, S, D), (None, W, H, K), (None, W, H, K)
    ]
    model = keras.Model(tokens, symbolic)
    x = _blocks()
    got = model(x.reshape(B, N * W, D))
    expected = keras.layers.RNN(cell, return_sequences=True, return_state=True)(x)
    np.testing.assert_allclose(got[0], np.asarray(expected[0]).reshape(B, N * W, D), atol=1e-5)
    for a, b in zip(got[1:], expected[1:]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_block_recurrent_rnn_config_round_trip_and_save(tmp_path):
    layer = BlockRecurrentRNN(BlockRecurrentCell(**CONFIG, gate="lstm"), return_state=True)
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    revived = keras.saving.deserialize_keras_object(config)
    assert revived.get_config() == layer.get_config()
    tokens = keras.Input((N * W, D))
    model = keras.Model(tokens, layer(tokens)[0])
    path = str(tmp_path / "rnn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _blocks().reshape(B, N * W, D)
    np.testing.assert_allclose(model(x), loaded(x), atol=1e-6)


def test_dropout_masks_are_drawn_outside_the_loop_and_only_in_training():
    plain = BlockRecurrentCell(**CONFIG)
    dropped = BlockRecurrentCell(**CONFIG, dropout=0.5)
    x = _blocks()
    for cell in (plain, dropped):
        cell.build((None, W, D))
    dropped.set_weights(plain.get_weights())
    run = lambda cell, training: keras.layers.RNN(cell, return_sequences=True, return_state=True)(
        x, training=training
    )
    for a, b in zip(run(plain, False), run(dropped, False)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    trained = run(dropped, True)
    assert np.abs(np.asarray(trained[0]) - np.asarray(run(plain, False)[0])).max() > 1e-3
    assert getattr(dropped, "_dropout_mask", None) is None  # reset after the RNN call


def test_bad_arguments():
    with pytest.raises(ValueError, match="gate"):
        BlockRecurrentCell(**{**CONFIG, "gate": "gru"})
    with pytest.raises(ValueError, match="state_mlp"):
        BlockRecurrentCell(**{**CONFIG, "state_mlp": "triple"})
    with pytest.raises(ValueError, match="num_state_vectors"):
        BlockRecurrentCell(**{**CONFIG, "num_state_vectors": 0})
    with pytest.raises(ValueError, match="hidden_dim=15, num_heads=2"):
        BlockRecurrentCell(**{**CONFIG, "hidden_dim": 15, "head_dim": None})
    cell = BlockRecurrentCell(**CONFIG)
    with pytest.raises(ValueError, match="block_size=4"):
        cell.build((None, 5, D))
    with pytest.raises(ValueError, match="multiple of block_size=4"):
        BlockRecurrentRNN(BlockRecurrentCell(**CONFIG))(np.zeros((1, 6, D), "float32"))
    with pytest.raises(ValueError, match="stateful"):
        BlockRecurrentRNN(BlockRecurrentCell(**CONFIG), stateful=True)
    with pytest.raises(ValueError, match="BlockRecurrentCell"):
        BlockRecurrentRNN(keras.layers.LSTMCell(4))
    with pytest.raises(ValueError, match="Received: unroll=-1"):
        BlockRecurrentRNN(BlockRecurrentCell(**CONFIG), unroll=-1)
    with pytest.raises(ValueError, match="state_attention_scale_init='large'"):
        BlockRecurrentCell(**CONFIG, state_attention_scale_init="large")
    with pytest.raises(ValueError, match="state_attention_scale_init=-2"):
        BlockRecurrentCell(**CONFIG, state_attention_scale_init=-2)
    with pytest.raises(ValueError, match="gate_bias_init='high'"):
        BlockRecurrentCell(**CONFIG, gate_bias_init="high")


@pytest.mark.parametrize("gate", ["fixed", "lstm"])
def test_state_initialisation_default_and_paper(gate):
    """The default starts the state's attentions at log2(n² - n) for their n keys and the
    keep gate at sigmoid(2) (+1 for the LSTM's forget offset); the paper's setting shares
    `attention_scale_init` and starts the gate at sigmoid(0)."""
    key_scale = lambda n: np.log2(n * n - n)
    old = np.ones((1, S, D), "float32")
    zeros = np.zeros_like(old)
    gate_input = np.zeros((1, S, 2 * H * K), "float32")
    for init, scales, keep in (
        ({}, (key_scale(S), key_scale(2 * W), key_scale(S)), 2.0),
        ({"gate_bias_init": 0.0, "state_attention_scale_init": None}, (3.0, 3.0, 3.0), 0.0),
        ({"state_attention_scale_init": 7.5}, (7.5, 7.5, 7.5), 2.0),
    ):
        cell = BlockRecurrentCell(**CONFIG, gate=gate, attention_scale_init=3.0, **init)
        cell.build((None, W, D))
        for variable, expected in zip(
            (cell.state_self_scale, cell.state_cross_scale, cell.token_cross_scale), scales
        ):
            np.testing.assert_allclose(np.asarray(variable), expected, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(cell.token_self_scale), 3.0)
        offset = 1.0 if gate == "lstm" else 0.0
        kept = np.asarray(cell.state_gate(old, zeros, gate_input))  # the keep gate itself
        assert abs(kept.mean() - reference.sigmoid(keep + offset)) < 0.03, (init, kept.mean())


@pytest.mark.parametrize("gate", ["fixed", "lstm"])
def test_chrono_gate_spreads_the_memories_and_round_trips(gate):
    """`gate_bias_init="chrono"`: each feature keeps sigmoid(log u) = u / (1 + u) of its old
    value, u ~ U(1, 63), i.e. memories of 1 + u blocks from 2 to 64 (the LSTM's +1 offset
    accounted for); the setting survives get_config."""
    keras.utils.set_random_seed(3)
    cell = BlockRecurrentCell(**{**CONFIG, "hidden_dim": 256, "num_heads": 4, "head_dim": 8},
                              gate=gate, gate_bias_init="chrono")
    cell.build((None, W, 256))
    old = np.ones((1, S, 256), "float32")
    kept = np.asarray(cell.state_gate(old, np.zeros_like(old), np.zeros((1, S, 2 * 4 * 8), "float32")))[0, 0]
    memory = 1.0 / (1.0 - kept)  # blocks
    assert memory.min() >= 2.0 - 1e-3 and memory.max() <= 64.0 + 1e-2
    assert np.quantile(memory, 0.1) < 16 and np.quantile(memory, 0.9) > 48  # spread, not one length
    assert BlockRecurrentCell.from_config(cell.get_config()).gate_bias_init == "chrono"


def test_chrono_initializer_draws_inside_a_compiled_function():
    """A model built while `fit` traces its step creates the gate's bias there: the chrono
    draw must be seeded (an unseeded JAX draw is refused while tracing), inside
    [log 1, log 63] less the offset, the same traced and eager on JAX and after a round trip."""
    init = ChronoInitializer(offset=1.0, seed=4)
    if keras.backend.backend() == "jax":
        import jax

        traced = jax.jit(lambda: init((64,)))()
    else:
        import tensorflow as tf

        traced = tf.function(lambda: init((64,)), jit_compile=True)()
    traced, eager = np.asarray(traced), np.asarray(init((64,)))
    if keras.backend.backend() == "jax":  # TF's XLA and eager draws use other generators
        np.testing.assert_allclose(traced, eager, rtol=1e-6)
    for values in (traced, eager):
        u = np.exp(values + 1.0)
        assert u.min() >= 1.0 - 1e-4 and u.max() <= 63.0 + 1e-3 and u.std() > 5.0
    again = ChronoInitializer.from_config(init.get_config())
    np.testing.assert_allclose(np.asarray(again((64,))), eager, rtol=1e-6)


@pytest.mark.parametrize(
    "gate,state_mlp,dropout,unroll",
    [("fixed", "skip", 0.0, False),
     # The other configurations compile the loop again: full suite only.
     pytest.param("lstm", "dual", 0.3, True, marks=pytest.mark.slow),
     pytest.param("fixed", "single", 0.0, N, marks=pytest.mark.slow)],
)
def test_parallel_token_path_equals_the_cell_in_the_loop(gate, state_mlp, dropout, unroll):
    """The default route (state-independent token work over all blocks at once, looped or
    unrolled) gives the cell's outputs, states and gradients, with the same dropout masks."""
    cell = BlockRecurrentCell(**CONFIG, gate=gate, state_mlp=state_mlp, dropout=dropout)
    fast = BlockRecurrentRNN(cell, return_state=True, unroll=unroll)
    loop = BlockRecurrentRNN(cell, return_state=True, parallel_token_path=False)
    x = _blocks().reshape(B, N * W, D)
    initial = _states(cell)
    for training in (False, True):
        seeds = cell.seed_generator
        seed = None if seeds is None else np.asarray(seeds.state.value)
        a = fast(x, initial_state=initial, training=training)
        if seeds is not None:
            seeds.state.assign(seed)  # the same masks for the second route
        b = loop(x, initial_state=initial, training=training)
        for got, expected in zip(a, b):
            np.testing.assert_allclose(got, expected, atol=2e-5)
    assert loop.get_config()["parallel_token_path"] is False
    assert fast.get_config()["unroll"] == unroll and fast.unroll == bool(unroll)
    if keras.backend.backend() == "jax":  # gradients through both loops
        import jax

        def loss(values, layer):
            with keras.StatelessScope(state_mapping=list(zip(cell.trainable_variables, values))):
                return ops.sum(ops.square(layer(x, initial_state=initial)[0]))

        values = [v.value for v in cell.trainable_variables]
        for g, h in zip(jax.grad(loss)(values, fast), jax.grad(loss)(values, loop)):
            np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-6 * float(np.max(np.abs(h))) + 1e-5)
