"""SavedModel export for TensorFlow Serving (TensorFlow backend).

TF Serving shares one model among all requests, so every signature is
stateless: the carried state goes in and comes out as named tensors and the
client keeps it between requests. A long document streams chunk by chunk through
`step`, exactly like `call_with_state` in Keras.

Signatures (all batch and length dimensions dynamic):

- `serving_default`: `token_ids` int32 `(B, T)` → `logits` float32 `(B, T, V)`
  (or `log_probs` with `scores="log_probs"`), from the start of a document.
- `initial_state`: `batch_size` int32 scalar → the state tensors of fresh lanes,
  named as in `backbone.state_shapes()` (`layer_{i}_keys`, `layer_{i}_values`,
  `layer_{i}_state`), float32.
- `step`: `token_ids` + the state tensors → `logits` (or `log_probs`) + the new
  state tensors under the same names. Send whole blocks (T a multiple of
  `block_size`) to continue a document; a final shorter chunk gets exact scores.
- `score_text` (with `tokenizer=`): `text` string `(B,)` → `token_ids`,
  `padding_mask`, `token_log_probs` (log-probability of each token given the text
  before it, the document's BOS first) and `bits_per_token` `(B,)`.
- `tokenize` (with `tokenizer=`): `text` string `(B,)` → `token_ids` `(B, T)`
  (BOS first, padded with 0) and `lengths` `(B,)`: what a client sends to `step`.

The two text signatures need the tokenizer's ops in the server: plain TF ops for
`ByteTokenizer`, tensorflow-text's for `SentencePieceTokenizer` (the stock TF
Serving build links tensorflow-text's ops).

Inside the graph every input is checked (ids in the vocabulary, state shapes
and batch); a bad request fails with an `InvalidArgumentError` that names the
input, not deep inside the model.
"""

import os
import shutil

import keras

SCORES = ("logits", "log_probs")


def _require_tensorflow():
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "SavedModel export traces the model with TensorFlow: run it with "
            "KERAS_BACKEND=tensorflow (a model saved as .keras on any backend loads there). "
            f"Received: backend={keras.backend.backend()!r}"
        )


def export_saved_model(lm, path, version=1, scores="logits", tokenizer=None, overwrite=False,
                       verbose=False):
    """Writes `lm` as a SavedModel for TF Serving at `path/<version>/`.

    Args:
        lm: a `BlockRecurrentTransformerCausalLM`.
        path: the model's base directory (TF Serving's `--model_base_path`).
        version: int >= 1, the version subdirectory TF Serving loads.
        scores: `"logits"` or `"log_probs"` (log-softmax over the vocabulary),
            the name and meaning of the score output of `serving_default` and
            `step`.
        tokenizer: optional keras_brt tokenizer; adds the `score_text` and
            `tokenize` signatures.
        overwrite: replace an existing `path/<version>/`. Without it an
            existing version is an error.
        verbose: print Keras's list of exported variables.

    Returns:
        The directory written, `path/<version>`.

    Example:

    ```python
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM.from_preset("tiny_rec_fixed_skip")
    keras_brt.export.export_saved_model(lm, "/models/brt", version=1)
    # tensorflow_model_server --rest_api_port=8501 --model_name=brt --model_base_path=/models/brt
    ```
    """
    _require_tensorflow()
    import tensorflow as tf

    if scores not in SCORES:
        raise ValueError(f"`scores` must be one of {SCORES}. Received: scores={scores!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"`version` must be an integer >= 1. Received: version={version!r}")
    target = os.path.join(os.fspath(path), str(version))
    if os.path.exists(target):
        if not overwrite:
            raise ValueError(
                f"The export path exists; pass overwrite=True (--overwrite) to replace it or "
                f"choose another version. Received: path={target!r}"
            )
        shutil.rmtree(target)

    backbone = lm.backbone
    if not lm.built:
        lm.build()
    vocabulary = backbone.vocabulary_size
    shapes = backbone.state_shapes(None)
    names = sorted(shapes)
    dtype = backbone.compute_dtype

    # A signature binds its inputs by name and dtype only: TF Serving and `signatures[...]`
    # pass tensors of any rank. `ensure_shape` stops those first, naming the input and the
    # expected shape, before an op that assumes the rank fails with a message naming neither.
    def ranked_ids(token_ids):
        return tf.ensure_shape(token_ids, (None, None), name="check_token_ids")

    def ranked_state(state):
        return {name: tf.ensure_shape(state[name], (None,) + tuple(shapes[name][1:]),
                                      name=f"check_{name}") for name in names}

    def check_ids(token_ids):
        return [
            tf.debugging.assert_positive(
                tf.reduce_prod(tf.shape(token_ids)),
                message="token_ids must hold at least one row and one token"),
            tf.debugging.assert_greater_equal(
                token_ids, 0, message="token_ids must be >= 0"),
            tf.debugging.assert_less(
                token_ids, vocabulary, message=f"token_ids must be < vocabulary_size={vocabulary}"),
        ]

    def check_state(token_ids, state):
        checks = []
        batch = tf.shape(token_ids)[0]
        for name in names:  # Their other dimensions are checked by `ranked_state`.
            checks.append(tf.debugging.assert_equal(
                tf.shape(state[name])[0], batch,
                message=f"state {name} must have the batch size of token_ids"))
        return checks

    def score(logits):
        return {scores: logits if scores == "logits" else tf.nn.log_softmax(logits, axis=-1)}

    def forward(token_ids, state):
        logits, new_state = lm.call_with_state(token_ids, state)
        return logits, {name: tf.cast(new_state[name], tf.float32) for name in names}

    ids_spec = tf.TensorSpec((None, None), tf.int32, name="token_ids")
    state_specs = {
        name: tf.TensorSpec((None,) + tuple(shapes[name][1:]), tf.float32, name=name)
        for name in names
    }

    def serving_default(token_ids):
        token_ids = ranked_ids(token_ids)
        with tf.control_dependencies(check_ids(token_ids)):
            logits, _ = forward(tf.identity(token_ids), None)
        return score(logits)

    def initial_state(batch_size):
        with tf.control_dependencies([tf.debugging.assert_positive(
                batch_size, message="batch_size must be >= 1")]):
            state = backbone.initial_state(tf.identity(batch_size))
        return {name: tf.cast(state[name], tf.float32) for name in names}

    def step(token_ids, state):
        token_ids, state = ranked_ids(token_ids), ranked_state(state)
        with tf.control_dependencies(check_ids(token_ids) + check_state(token_ids, state)):
            token_ids = tf.identity(token_ids)
            state = {name: tf.cast(tf.identity(state[name]), dtype) for name in names}
        logits, new_state = forward(token_ids, state)
        return {**score(logits), **new_state}

    archive = keras.export.ExportArchive()
    archive.track(lm)
    archive.add_endpoint("serving_default", tf.function(serving_default, input_signature=[ids_spec]))
    archive.add_endpoint("initial_state", tf.function(
        initial_state, input_signature=[tf.TensorSpec((), tf.int32, name="batch_size")]))
    archive.add_endpoint("step", tf.function(step, input_signature=[ids_spec, state_specs]))
    if tokenizer is not None:
        resource = getattr(tokenizer, "_tokenizer", None)  # tensorflow-text's model resource
        if resource is not None:
            archive.track(resource)
        bos = int(getattr(tokenizer, "bos_id", 1))

        def score_text(text):
            pieces = tokenizer(text)  # (B, None) ragged
            pieces = tf.concat([tf.fill([tf.shape(text)[0], 1], bos), pieces], axis=1)
            ids = pieces.to_tensor(default_value=0)  # (B, T + 1), BOS first
            mask = tf.sequence_mask(pieces.row_lengths(), tf.shape(ids)[1])  # (B, T + 1)
            logits, _ = lm.call_with_state(ids[:, :-1], None, padding_mask=mask[:, :-1])
            log_probs = tf.nn.log_softmax(logits, axis=-1)  # (B, T, V)
            token_log_probs = tf.gather(log_probs, ids[:, 1:], axis=2, batch_dims=2)  # (B, T)
            target_mask = tf.cast(mask[:, 1:], tf.float32)
            token_log_probs *= target_mask
            count = tf.maximum(tf.reduce_sum(target_mask, axis=1), 1.0)
            bits = -tf.reduce_sum(token_log_probs, axis=1) / count / tf.math.log(2.0)
            return {"token_ids": ids[:, 1:], "padding_mask": mask[:, 1:],
                    "token_log_probs": token_log_probs, "bits_per_token": bits}

        def tokenize(text):
            pieces = tokenizer(text)  # (B, None) ragged
            pieces = tf.concat([tf.fill([tf.shape(text)[0], 1], bos), pieces], axis=1)
            return {"token_ids": pieces.to_tensor(default_value=0),
                    "lengths": tf.cast(pieces.row_lengths(), tf.int32)}

        text_spec = [tf.TensorSpec((None,), tf.string, name="text")]
        archive.add_endpoint("score_text", tf.function(score_text, input_signature=text_spec))
        archive.add_endpoint("tokenize", tf.function(tokenize, input_signature=text_spec))
    archive.write_out(target, verbose=verbose)
    return target
