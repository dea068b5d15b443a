"""SavedModel export for TF Serving, checked from a process that never imports keras_brt."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_brt.data import ByteTokenizer
from tests.models.common import W, make_lm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENSORFLOW = keras.backend.backend() == "tensorflow"
tensorflow_backend_only = pytest.mark.skipif(
    not TENSORFLOW, reason="SavedModel export traces the model with the TensorFlow backend"
)
V = 259  # The byte tokenizer's vocabulary, so that score_text works too.
CHUNKS = [2 * W, W, 3 * W, W + 2]  # Whole blocks, then a shorter last chunk.


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    if not TENSORFLOW:
        pytest.skip("SavedModel export traces the model with the TensorFlow backend")
    from keras_brt.export import export_saved_model

    keras.utils.set_random_seed(7)
    lm = make_lm(vocabulary_size=V)
    lm.build()
    base = tmp_path_factory.mktemp("export") / "brt"
    path = export_saved_model(lm, str(base), version=3, tokenizer=ByteTokenizer())
    rng = np.random.default_rng(0)
    ids = rng.integers(3, V, (3, sum(CHUNKS))).astype("int32")
    texts = ["def f(x):\n    return x", "", "état"]  # An empty document is just its BOS.
    requests = tmp_path_factory.mktemp("client") / "requests.npz"
    responses = requests.parent / "responses.npz"
    np.savez(requests, token_ids=ids, chunks=np.array(CHUNKS), texts=np.array(texts),
             vocabulary_size=np.array(V))
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "serving_client.py"), path,
                          str(requests), str(responses)],
                         capture_output=True, text=True, cwd=str(requests.parent), timeout=300,
                         env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    return lm, base, path, ids, texts, dict(np.load(responses))


@tensorflow_backend_only
def test_layout_and_a_client_without_keras_brt(exported):
    _, base, path, _, _, out = exported
    assert path == os.path.join(str(base), "3")
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert os.path.isdir(os.path.join(path, "variables"))
    assert list(out["signatures"]) == ["initial_state", "score_text", "serving_default", "step", "tokenize"]
    assert not [m for m in out["imported"] if m.startswith("keras_brt")]


@tensorflow_backend_only
def test_streaming_step_equals_call_with_state_on_the_whole(exported):
    lm, _, _, ids, _, out = exported
    logits, _ = lm.call_with_state(ids)
    np.testing.assert_allclose(out["streamed_logits"], np.asarray(logits), atol=2e-4)
    np.testing.assert_allclose(out["default_logits"], np.asarray(logits), atol=2e-4)
    # The state handed back after the whole blocks is the model's own.
    whole = sum(CHUNKS[:-1])
    _, state = lm.call_with_state(ids[:, :whole])
    assert sorted(out["state_names"]) == sorted(state)
    for name, value in state.items():
        np.testing.assert_allclose(out[f"state/{name}"], np.asarray(value), atol=2e-4, err_msg=name)


@tensorflow_backend_only
def test_dynamic_batch_and_length(exported):
    lm, _, _, ids, _, out = exported
    logits, _ = lm.call_with_state(ids[:1, :5])  # batch 1, length 5 (not a block multiple)
    assert out["default_logits_row0"].shape == (1, 5, V)
    np.testing.assert_allclose(out["default_logits_row0"], np.asarray(logits), atol=2e-4)


@tensorflow_backend_only
def test_score_text_matches_the_model(exported):
    lm, _, _, _, texts, out = exported
    tokenizer = ByteTokenizer()
    for row, text in enumerate(texts):
        ids = np.concatenate([[tokenizer.bos_id], np.asarray(tokenizer(text), "int32")]).astype("int32")
        n = len(ids) - 1
        assert out["text/padding_mask"][row].sum() == n
        np.testing.assert_array_equal(out["text/token_ids"][row, :n], ids[1:])
        if n == 0:
            assert out["text/bits_per_token"][row] == 0
            continue
        logits, _ = lm.call_with_state(ids[None, :-1])
        log_probs = np.asarray(keras.ops.log_softmax(logits, axis=-1))[0]
        expected = log_probs[np.arange(n), ids[1:]]
        np.testing.assert_allclose(out["text/token_log_probs"][row, :n], expected, atol=2e-4)
        assert out["text/bits_per_token"][row] == pytest.approx(-expected.mean() / np.log(2), abs=1e-4)


@tensorflow_backend_only
def test_bad_requests_fail_with_a_message_naming_the_input(exported):
    _, _, _, _, _, out = exported
    errors = json.loads(str(out["errors"]))
    name = str(out["state_names"][0])
    # Shapes the signature cannot pin down (batch, and TF Serving checks none) are checked in the graph.
    assert "InvalidArgumentError" in errors["state_batch"]
    assert f"state {name} must have the batch size of token_ids" in errors["state_batch"]
    assert f"Shape of tensor {name} [3,{W + 1},2,8] is not compatible with expected shape [?,{W},2,8]" \
        in errors["state_shape"]
    assert f"token_ids must be < vocabulary_size={V}" in errors["out_of_vocabulary"]
    assert name in errors["missing_state"]  # Python's own binding error, from the signature.
    assert "token_ids must hold at least one row and one token" in errors["no_tokens"]
    # Signatures take tensors of any rank; the graph checks the rank first, naming the input.
    assert "Shape of tensor token_ids [4] is not compatible with expected shape [?,?]" \
        in errors["one_dimensional"]
    assert f"Shape of tensor {name} [3,1,{W},2,8] is not compatible with expected shape [?,{W},2,8]" \
        in errors["rank_5_state"]
    # The SavedModel's `step` method binds dtypes itself, naming the input and the expected spec.
    for key, dtype in (("int64_method", "int64"), ("float_method", "float32")):
        assert re.search(rf"TensorSpec\(shape=\(3, 4\), dtype=tf.{dtype}, name='token_ids'\) to "
                         r"TensorSpec\(shape=\(None, None\), dtype=tf.int32, name='token_ids'\)",
                         errors[key]), errors[key]


@tensorflow_backend_only
def test_saved_model_cli_lists_named_signatures(exported):
    _, _, path, _, _, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    text = shown.stdout
    for signature in ("serving_default", "initial_state", "step", "score_text"):
        assert f"signature_def['{signature}']" in text
    step = text.split("signature_def['step']")[1].split("signature_def[")[0]
    for name in ("layer_1_state", "layer_0_keys", "layer_2_values"):
        assert f"inputs['{name}']" in step and f"outputs['{name}']" in step
    assert "inputs['token_ids']" in step and "outputs['logits']" in step and f"shape: (-1, -1, {V})" in step


@tensorflow_backend_only
def test_existing_export_is_refused_unless_overwritten(exported):
    from keras_brt.export import export_saved_model

    lm, base, path, _, _, _ = exported
    with pytest.raises(ValueError, match="export path exists.*overwrite=True"):
        export_saved_model(lm, str(base), version=3)
    with pytest.raises(ValueError, match="`version` must be an integer >= 1. Received: version=0"):
        export_saved_model(lm, str(base), version=0)
    with pytest.raises(ValueError, match="`scores` must be one of .* Received: scores='probs'"):
        export_saved_model(lm, str(base), version=4, scores="probs")


@tensorflow_backend_only
def test_log_probs_scores_and_overwrite(tmp_path):
    import tensorflow as tf

    from keras_brt.export import export_saved_model

    lm = make_lm()
    lm.build()
    export_saved_model(lm, str(tmp_path), version=1)
    path = export_saved_model(lm, str(tmp_path), version=1, scores="log_probs", overwrite=True)
    ids = np.random.default_rng(1).integers(0, 40, (2, 2 * W)).astype("int32")
    served = tf.saved_model.load(path).signatures["serving_default"](token_ids=tf.constant(ids))
    assert list(served) == ["log_probs"]
    logits, _ = lm.call_with_state(ids)
    np.testing.assert_allclose(served["log_probs"].numpy(),
                               np.asarray(keras.ops.log_softmax(logits, axis=-1)), atol=2e-4)


@pytest.mark.skipif(TENSORFLOW, reason="the error is for the other backends")
def test_export_on_another_backend_says_which_backend_to_use(tmp_path):
    from keras_brt.export import export_saved_model

    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow"):
        export_saved_model(make_lm(), str(tmp_path))


@tensorflow_backend_only
def test_serve_rest_example_streams_through_step_like_the_whole_text(exported):
    _, _, path, _, _, _ = exported
    text = "Block-Recurrent Transformers carry a state from block to block. "
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "serve_rest.py"), "--model-dir", path,
         "--text", text, "--blocks-per-request", "2", "--show-bodies"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": ""},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    body = next(line for line in run.stdout.splitlines() if line.startswith("{"))
    inputs = json.loads(body)["inputs"]
    assert inputs["token_ids"][0][:3] == [1, ord("B") + 3, ord("l") + 3]  # BOS, then bytes + 3
    assert len(inputs["token_ids"][0]) == 2 * W  # two blocks per request
    assert {"layer_1_state", "layer_0_keys", "layer_2_values"} <= set(inputs)
    streamed, whole = map(float, re.search(r"step: ([\d.]+); score_text on the whole: ([\d.]+)",
                                           run.stdout).groups())
    assert streamed == pytest.approx(whole, abs=1e-4)  # 9 requests == one pass over the text
