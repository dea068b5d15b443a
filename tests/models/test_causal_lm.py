"""The model's contract: causality, isolation, recurrence, chunking, resets, padding."""

import numpy as np
import pytest

from tests.models.common import V, W, make_lm, numpy_state, token_ids


def _logits(lm, ids, state=None, **kwargs):
    logits, new_state = lm.call_with_state(ids, state, **kwargs)
    return np.asarray(logits), new_state


@pytest.mark.parametrize("position,config", [(0, {}), (2, {}), (5, {}), (13, {}),
                                             (5, {"feedback": True})])
def test_changing_a_token_never_changes_earlier_logits(position, config):
    lm = make_lm(**config)
    ids = token_ids(batch=1)
    base, _ = _logits(lm, ids)
    changed = ids.copy()
    changed[0, position] = (changed[0, position] + 1) % V
    out, _ = _logits(lm, changed)
    np.testing.assert_array_equal(out[:, :position], base[:, :position])
    assert np.abs(out[:, position] - base[:, position]).max() > 1e-5


def test_causality_across_calls():
    lm = make_lm()
    ids = token_ids(batch=1, length=16)
    first, state = _logits(lm, ids[:, :8])
    second, _ = _logits(lm, ids[:, 8:], state)
    changed = ids[:, 8:].copy()
    changed[0, 3] = (changed[0, 3] + 1) % V
    second_changed, _ = _logits(lm, changed, state)
    np.testing.assert_array_equal(second_changed[:, :3], second[:, :3])
    assert np.abs(second_changed[:, 3:] - second[:, 3:]).max() > 1e-5


def test_batch_rows_are_isolated():
    lm = make_lm()
    ids = token_ids(batch=3)
    base, base_state = _logits(lm, ids)
    changed = ids.copy()
    changed[1] = token_ids(batch=1, seed=7)[0]
    out, out_state = _logits(lm, changed)
    np.testing.assert_array_equal(out[[0, 2]], base[[0, 2]])
    assert np.abs(out[1] - base[1]).max() > 1e-3
    for name in base_state:
        np.testing.assert_array_equal(
            np.asarray(out_state[name])[[0, 2]], np.asarray(base_state[name])[[0, 2]]
        )


def test_only_the_recurrence_carries_block_zero_beyond_the_stacked_windows():
    """L layers of W-token windows reach back L*W tokens; the state reaches further."""
    ids = token_ids(batch=1, length=8 * W)
    changed = ids.copy()
    changed[0, W - 1] = (changed[0, W - 1] + 1) % V
    reach = (W - 1) + 3 * W  # 3 layers: the last position a change can reach
    for recurrent_layers, carries in (((), False), ((1,), True)):
        lm = make_lm(recurrent_layers=recurrent_layers)
        base, _ = _logits(lm, ids)
        out, _ = _logits(lm, changed)
        beyond = np.abs(out[:, reach + 1 :] - base[:, reach + 1 :]).max()
        if carries:
            assert beyond > 1e-4, "the state did not carry block 0 forward"
            assert np.abs(out[:, -W:] - base[:, -W:]).max() > 1e-4
        else:
            assert beyond == 0.0, "a model without recurrence saw beyond its windows"


def test_feedback_lets_the_layers_below_read_the_state():
    """Feedback: the other layers read the recurrent layer's state. With the recurrent layer
    last and its own tokens' read of the state cut (the state half of its output projection
    zeroed), block 0 reaches beyond the stacked windows only through the lower layers' reads
    of the state: with feedback it does, without feedback never."""
    ids = token_ids(batch=1, length=8 * W)
    changed = ids.copy()
    changed[0, W - 1] = (changed[0, W - 1] + 1) % V
    reach = (W - 1) + 3 * W
    for feedback in (False, True):
        lm = make_lm(recurrent_layers=(2,), feedback=feedback)
        lm.build()
        cell = lm.backbone.transformer_layers[2].cell
        hk = cell.num_heads * cell.head_dim
        kernel = np.array(cell.token_output_dense.kernel)
        kernel[hk:] = 0.0  # rows read by the heads of the tokens' state attention
        cell.token_output_dense.kernel.assign(kernel)
        base, _ = _logits(lm, ids)
        out, _ = _logits(lm, changed)
        beyond = np.abs(out[:, reach + 1:] - base[:, reach + 1:]).max()
        if feedback:
            assert beyond > 1e-4, "with feedback the lower layers did not read the state"
        else:
            assert beyond == 0.0, "without feedback only the recurrent layer reads the state"


@pytest.mark.parametrize("split,config", [(W, {}), (2 * W, {}), (5 * W, {}),
                                          (2 * W, {"feedback": True})])
def test_chunked_calls_equal_one_call(split, config):
    lm = make_lm(**config)
    ids = token_ids(length=6 * W + 3)
    whole, whole_state = _logits(lm, ids)
    first, state = _logits(lm, ids[:, :split])
    second, state = _logits(lm, ids[:, split:], state)
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, atol=1e-4)
    for name, value in numpy_state(whole_state).items():
        np.testing.assert_allclose(np.asarray(state[name]), value, atol=1e-5)


@pytest.mark.parametrize("length", [1, 3, W + 1, 3 * W - 1])
def test_lengths_that_are_not_whole_blocks_match_a_longer_call(length):
    lm = make_lm()
    ids = token_ids(length=4 * W)
    longer, _ = _logits(lm, ids)
    shorter, _ = _logits(lm, ids[:, :length])
    assert shorter.shape == (2, length, V)
    np.testing.assert_allclose(shorter, longer[:, :length], atol=1e-5)


def test_start_of_sequence_rows_equal_a_fresh_call_whatever_the_state():
    lm = make_lm()
    ids = token_ids(length=3 * W)
    _, used_state = _logits(lm, token_ids(length=2 * W, seed=3))
    fresh, fresh_state = _logits(lm, ids)
    carried, _ = _logits(lm, ids, used_state)
    reset, reset_state = _logits(lm, ids, used_state, start_of_sequence=np.array([True, False]))
    np.testing.assert_allclose(reset[0], fresh[0], atol=1e-5)
    np.testing.assert_allclose(reset[1], carried[1], atol=1e-5)
    assert np.abs(carried[0] - fresh[0]).max() > 1e-4  # the state mattered
    for name in fresh_state:
        np.testing.assert_allclose(np.asarray(reset_state[name])[0], np.asarray(fresh_state[name])[0], atol=1e-5)


def test_padded_positions_are_null_tokens():
    lm = make_lm()
    ids = token_ids(length=3 * W)
    mask = np.ones_like(ids, bool)
    mask[0, 5:7] = False
    mask[1, -3:] = False
    other = ids.copy()
    other[~mask] = (other[~mask] + 7) % V
    a, _ = _logits(lm, ids, padding_mask=mask)
    b, _ = _logits(lm, other, padding_mask=mask)
    np.testing.assert_allclose(a[mask], b[mask], atol=1e-6)
    unmasked, _ = _logits(lm, ids)
    assert np.abs(unmasked[0, 7:] - a[0, 7:]).max() > 1e-4  # padding did hide the tokens


def test_state_structure_and_shapes():
    lm = make_lm()
    state = lm.initial_state(5)
    assert sorted(state) == sorted(
        [f"layer_{i}_{part}" for i in range(3) for part in ("keys", "values")] + ["layer_1_state"]
    )
    assert tuple(state["layer_1_state"].shape) == (5, 3, 16)
    assert tuple(state["layer_0_keys"].shape) == (5, W, 2, 8)
    cell = lm.backbone.transformer_layers[1].cell
    np.testing.assert_allclose(np.asarray(state["layer_1_state"])[4], cell.initial_state.numpy())
    # The layout the lanes, evaluation and export read describes exactly this state, and
    # the state of what the model returns.
    layout = lm.backbone.state_layout
    assert layout.shapes(5) == {k: tuple(v.shape) for k, v in state.items()}
    assert layout.state_vector_names == ("layer_1_state",)
    _, new_state = lm.call_with_state(token_ids(5, 2 * W))
    assert layout.shapes(5) == {k: tuple(v.shape) for k, v in new_state.items()}
    cache = lm.backbone.decode_cache(state)
    assert sorted(cache) == sorted(f"layer_{i}_{part}" for i in range(3) for part in layout.decoding_parts(i))


def test_token_cross_entropy_equals_keras_sparse_cross_entropy():
    """The default loss: Keras's sparse cross-entropy values without its one-hot; a target
    outside the vocabulary is NaN, not a silently clamped or zero loss; it round-trips."""
    import keras

    from keras_brt.models import TokenCrossEntropy

    rng = np.random.default_rng(0)
    logits = (3 * rng.normal(size=(3, 5, 11))).astype("float32")
    targets = rng.integers(0, 11, (3, 5)).astype("int32")
    weights = rng.integers(0, 2, (3, 5)).astype("float32")
    ours, keras_loss = TokenCrossEntropy(), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    np.testing.assert_allclose(ours(targets, logits), keras_loss(targets, logits), rtol=1e-5)
    np.testing.assert_allclose(ours(targets, logits, sample_weight=weights),
                               keras_loss(targets, logits, sample_weight=weights), rtol=1e-5)
    per_token = np.asarray(TokenCrossEntropy(reduction=None)(targets, logits))
    bad = targets.copy()
    bad[1, 2] = 11
    out = np.asarray(TokenCrossEntropy(reduction=None)(bad, logits))
    assert np.isnan(out[1, 2]) and np.allclose(np.delete(out.ravel(), 7), np.delete(per_token.ravel(), 7))
    restored = keras.losses.deserialize(keras.losses.serialize(ours))
    assert isinstance(restored, TokenCrossEntropy) and restored.get_config() == ours.get_config()
    lm = make_lm()
    lm.compile()
    assert isinstance(lm.loss, TokenCrossEntropy)
