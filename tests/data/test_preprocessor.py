"""The causal LM's preprocessor (KerasHub's role): strings in, for fit, evaluate, predict,
generate, `.keras` files and preset folders."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_brt
from keras_brt.data import BlockRecurrentTransformerCausalLMPreprocessor, ByteTokenizer
from keras_brt.models import preset_io
from tests.conftest import jax_pass_only
from tests.models.common import make_lm

CausalLM = keras_brt.models.BlockRecurrentTransformerCausalLM
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T = 10
TEXTS = ["def f():", "import os", "x = 1", "print(x)  # a line longer than T"]


def byte_ids(text, length, end=True):
    """BOS, the UTF-8 bytes (+3), EOS, then padding: `length` ids and their mask, by hand."""
    ids = [1] + [b + 3 for b in text.encode("utf-8")] + ([2] if end else [])
    ids = ids[:length]
    mask = [True] * len(ids) + [False] * (length - len(ids))
    return np.array(ids + [0] * (length - len(ids)), "int32"), np.array(mask)


def by_hand(texts, rows):
    """The inputs, targets and weights of `texts` as the preprocessor should make them,
    with padding rows up to `rows`."""
    packed = [byte_ids(t, T + 1) for t in texts] + [
        (np.zeros(T + 1, "int32"), np.zeros(T + 1, bool))] * (rows - len(texts))
    ids = np.stack([p[0] for p in packed])
    mask = np.stack([p[1] for p in packed])
    x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1],
         "start_of_sequence": np.ones(rows, bool)}
    return x, ids[:, 1:], mask[:, 1:].astype("float32")


def make_text_lm(seed=0):
    keras.utils.set_random_seed(seed)
    lm = make_lm(vocabulary_size=259)
    lm.backbone.build()  # the initial weights now, before any draw the data makes
    lm = CausalLM(lm.backbone, preprocessor=BlockRecurrentTransformerCausalLMPreprocessor(
        ByteTokenizer(), sequence_length=T))
    lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    return lm


def test_preprocessor_packs_strings_like_keras_hub():
    preprocessor = BlockRecurrentTransformerCausalLMPreprocessor(ByteTokenizer(), sequence_length=T)
    x, y, weight = preprocessor(TEXTS)
    expected_x, expected_y, expected_weight = by_hand(TEXTS, len(TEXTS))
    for key in expected_x:
        np.testing.assert_array_equal(np.asarray(x[key]), expected_x[key])
    np.testing.assert_array_equal(np.asarray(y), expected_y)
    np.testing.assert_array_equal(np.asarray(weight), expected_weight)
    one = preprocessor.generate_preprocess("ab")  # a BOS and no EOS
    np.testing.assert_array_equal(np.asarray(one["token_ids"]), byte_ids("ab", T, end=False)[0])
    assert preprocessor.generate_postprocess({k: np.asarray(v) for k, v in one.items()}) == "ab"


def test_fit_evaluate_and_predict_on_strings_equal_the_same_arrays():
    lm = make_text_lm()  # one model (one compiled step), SGD so that a rerun starts clean
    lm.compile(optimizer=keras.optimizers.SGD(0.5))
    initial = lm.backbone.get_weights()
    # 4 strings in batches of 3: the last batch gets two padding rows of weight 0.
    lm.fit(TEXTS, batch_size=3, verbose=0)
    by_strings = [np.asarray(w) for w in lm.backbone.weights]
    loss = lm.evaluate(TEXTS, batch_size=3, verbose=0, return_dict=True)["loss"]
    logits = lm.predict(TEXTS, batch_size=3, verbose=0)

    lm.backbone.set_weights(initial)  # as they were; every row restarts its lane anyway
    x, y, weight = by_hand(TEXTS, 6)
    lm.fit(x, y, sample_weight=weight, batch_size=3, verbose=0)
    for a, b in zip(lm.backbone.weights, by_strings):
        np.testing.assert_allclose(b, np.asarray(a), atol=1e-6, err_msg=a.path)
    expected = lm.evaluate(x, y, sample_weight=weight, batch_size=3, verbose=0,
                           return_dict=True)["loss"]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)

    assert logits.shape == (len(TEXTS), T, 259)  # the padding rows are not returned
    # The model now carries 3 lanes: strings go in batches of 3, whatever their number.
    np.testing.assert_allclose(lm.predict(TEXTS[1:2], verbose=0), logits[1:2], atol=1e-5)
    with pytest.raises(ValueError, match="carries 3 lanes.*batch_size=2"):
        lm.evaluate(TEXTS, batch_size=2, verbose=0)
    for row in (1, 3):  # one padded, one cut
        ids, mask = byte_ids(TEXTS[row], T)
        alone = np.asarray(lm.call_with_state(ids[None, : mask.sum()])[0])[0]
        np.testing.assert_allclose(logits[row, : mask.sum()], alone, atol=1e-4)


@jax_pass_only  # tf.data feeds both backends alike
def test_validation_strings_in_keras_tuples_equal_evaluate():
    lm = make_text_lm()
    for validation in ((TEXTS, None), (TEXTS,)):
        history = lm.fit(TEXTS, batch_size=2, validation_data=validation, verbose=0).history
        expected = lm.evaluate(TEXTS, verbose=0, return_dict=True)["loss"]
        np.testing.assert_allclose(history["val_loss"][-1], expected, rtol=1e-5)
    with pytest.raises(ValueError, match=r"validation_data=\(strings, ndarray\)"):
        lm.fit(TEXTS, validation_data=(TEXTS, np.zeros((4, T))), verbose=0)


def test_a_dataset_of_string_pairs_is_refused_by_name():
    import tensorflow as tf

    lm = make_text_lm()
    pairs = tf.data.Dataset.from_tensor_slices((TEXTS, TEXTS)).batch(2)
    with pytest.raises(ValueError, match="their own targets.*element_spec=.*tf.string"):
        lm.fit(pairs, verbose=0)
    with pytest.raises(ValueError, match="their own targets"):
        lm.evaluate(pairs, verbose=0)


def test_generate_takes_text_through_the_preprocessors_tokenizer():
    lm = make_text_lm()
    text = lm.generate("def", max_length=8, sampler="greedy")
    assert text == lm.generate("def", max_length=8, sampler="greedy", tokenizer=ByteTokenizer())
    assert text.startswith("def") and len(text.encode("utf-8")) <= 7


def test_preprocessor_survives_keras_files_and_preset_folders(tmp_path):
    lm = make_text_lm()
    expected = lm.predict(TEXTS, batch_size=2, verbose=0)
    path = str(tmp_path / "lm.keras")
    lm.save(path)
    folder = str(tmp_path / "preset")
    lm.save_to_preset(folder)
    for loaded in (keras.saving.load_model(path), CausalLM.from_preset(folder)):
        assert isinstance(loaded.preprocessor, BlockRecurrentTransformerCausalLMPreprocessor)
        assert loaded.preprocessor.sequence_length == T
        assert loaded.tokenizer is loaded.preprocessor.tokenizer
        np.testing.assert_allclose(loaded.predict(TEXTS, batch_size=2, verbose=0), expected,
                                   atol=1e-5)


@jax_pass_only  # registration does not depend on the backend; one subprocess is enough
def test_a_saved_preprocessor_loads_in_a_fresh_process(tmp_path):
    """Nothing has imported the tokenizers there: the `.keras` file and the preset folder
    must register what they name."""
    lm = make_text_lm()
    expected = lm.predict(TEXTS, batch_size=2, verbose=0)
    path, folder = str(tmp_path / "lm.keras"), str(tmp_path / "preset")
    lm.save(path)
    lm.save_to_preset(folder)
    np.save(str(tmp_path / "expected.npy"), expected)
    code = (
        "import sys, keras, numpy as np, keras_brt\n"
        "path, folder, expected = sys.argv[1:]\n"
        "for lm in (keras.saving.load_model(path),\n"
        "           keras_brt.models.BlockRecurrentTransformerCausalLM.from_preset(folder)):\n"
        f"    got = lm.predict({TEXTS!r}, batch_size=2, verbose=0)\n"
        "    np.testing.assert_allclose(got, np.load(expected), atol=1e-5)\n"
        "    print(type(lm.tokenizer).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, path, folder, str(tmp_path / "expected.npy")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ByteTokenizer", "ByteTokenizer"]


def test_preprocessor_errors_name_the_argument():
    with pytest.raises(ValueError, match="sequence_length=0"):
        BlockRecurrentTransformerCausalLMPreprocessor(ByteTokenizer(), sequence_length=0)
    with pytest.raises(ValueError, match="tokenizer"):
        BlockRecurrentTransformerCausalLMPreprocessor("bytes", sequence_length=T)
    lm = make_text_lm()
    with pytest.raises(ValueError, match="do not pass `y`"):
        lm.fit(TEXTS, np.zeros((4, T)), batch_size=2, verbose=0)
    with pytest.raises(ValueError, match="sample_weight"):
        lm.preprocessor(TEXTS, sample_weight=np.ones((4, T)))
    with pytest.raises(ValueError, match="tokenize alike"):
        CausalLM(lm.backbone, tokenizer=ByteTokenizer(), preprocessor=lm.preprocessor)
    with pytest.raises(ValueError, match="add_start_token=False"):
        CausalLM(lm.backbone, preprocessor=BlockRecurrentTransformerCausalLMPreprocessor(
            ByteTokenizer(), sequence_length=T, add_start_token=False))


@pytest.mark.parametrize("handle", ["hf://someone/brt", "kaggle://someone/brt/keras/tiny"])
def test_a_hub_handle_without_its_downloader_names_the_package(handle):
    package = preset_io.HANDLE_LOADERS[handle.split("//")[0] + "//"]
    try:
        __import__(package)
        pytest.skip(f"{package} is installed here; the download itself is not tested")
    except ImportError:
        pass
    with pytest.raises(ValueError, match=f"pip install .*{handle}"):
        CausalLM.from_preset(handle)
    assert not os.path.exists(handle)
