"""backbone.enable_lora(rank) and model.quantize("int8"), with the tied output layer."""

import keras
import numpy as np
import pytest

from tests.models.common import make_lm, token_ids


def _logits(lm, ids):
    return np.asarray(lm.call_with_state(ids)[0])


@pytest.mark.slow
def test_lora_trains_only_its_factors_and_merged_weights_give_the_same_logits(tmp_path):
    keras.utils.set_random_seed(0)
    ids = token_ids(length=12)
    lm = make_lm()
    _logits(lm, ids)
    lm.backbone.enable_lora(2)
    trainable = {v.path.split("/")[-1] for v in lm.trainable_variables}
    assert trainable == {"lora_kernel_a", "lora_kernel_b"}, trainable
    frozen = {v.path: np.asarray(v) for v in lm.weights if "lora" not in v.path}
    lm.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=keras.backend.backend() == "jax")
    data = {"token_ids": ids, "start_of_sequence": np.ones(2, bool)}
    lm.fit(data, ids, batch_size=2, epochs=3, verbose=0)
    for v in lm.weights:  # only the LoRA factors moved (the lanes are carried state)
        if v.path in frozen and "lane" not in v.path:
            np.testing.assert_array_equal(np.asarray(v), frozen[v.path], err_msg=v.path)
    targets = [layer for layer in lm.backbone._flatten_layers() if getattr(layer, "lora_enabled", False)]
    assert len(targets) == 4 and any(np.abs(np.asarray(t.lora_kernel_b)).max() > 0 for t in targets)
    tuned = _logits(lm, ids)

    # The same model with each kernel merged, W + (alpha / rank) A B, and no LoRA.
    merged = make_lm()
    _logits(merged, ids)
    lora_kernels = {t.path + "/kernel": t for t in targets}  # (t.kernel is the merged tensor)
    # The backbone's weights (not the causal LM's carried lanes and training guard).
    sources = [v for v in lm.backbone.weights if "lora" not in v.path]
    destinations = merged.backbone.weights
    assert len(sources) == len(destinations)
    for v, destination in zip(sources, destinations):  # the same layers in the same order
        assert v.path.split("/")[-2:] == destination.path.split("/")[-2:], (v.path, destination.path)
        value = np.asarray(v)
        if v.path in lora_kernels:
            layer = lora_kernels[v.path]
            delta = np.asarray(layer.lora_kernel_a) @ np.asarray(layer.lora_kernel_b)
            value = value + (layer.lora_alpha / layer.lora_rank) * delta
        destination.assign(value)
    np.testing.assert_allclose(_logits(merged, ids), tuned, atol=1e-4)

    path = str(tmp_path / "lora.weights.h5")
    lm.save_weights(path)
    again = make_lm()
    _logits(again, ids)
    again.backbone.enable_lora(2)
    again.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=False)
    again.fit(data, ids, batch_size=2, verbose=0)  # creates the training lanes the file holds
    again.load_weights(path)
    np.testing.assert_array_equal(_logits(again, ids), tuned)


@pytest.mark.slow
def test_int8_keeps_the_tied_output_layer_close_to_float_and_reloads(tmp_path):
    keras.utils.set_random_seed(0)
    ids = token_ids(length=16)
    lm = make_lm()
    reference = _logits(lm, ids)
    lm.quantize("int8")
    assert lm.backbone.token_embedding.quantization_mode == "int8"
    quantized = _logits(lm, ids)
    # Before the fix the tied logits read the raw int8 matrix: errors of ~50x the logits.
    assert np.abs(quantized - reference).max() < 0.05 * np.abs(reference).max()
    assert (quantized.argmax(-1) == reference.argmax(-1)).mean() > 0.9
    path = str(tmp_path / "int8.weights.h5")
    lm.save_weights(path)
    keras.utils.set_random_seed(5)
    again = make_lm()
    _logits(again, ids)
    again.quantize("int8")
    again.load_weights(path)
    np.testing.assert_array_equal(_logits(again, ids), quantized)


def test_lora_with_no_matching_layer_is_refused():
    lm = make_lm()
    with pytest.raises(ValueError, match=r"target_layer_names=\['attention'\]"):
        lm.backbone.enable_lora(2, target_layer_names=["attention"])
    with pytest.raises(ValueError, match=r"rank"):
        lm.backbone.enable_lora(0)
