"""Tokenizers usable inside tf.data: bytes, and SentencePiece through tensorflow-text."""

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_brt")
class ByteTokenizer(keras.layers.Layer):
    """UTF-8 bytes as tokens: byte b is id b + 3; 0 = padding, 1 = BOS, 2 = EOS.

    The layout of meliad's byte vocabulary (seqio ByteVocabulary): three special
    ids then the 256 bytes, 259 ids in all.

    Call arguments:
        inputs: a string scalar `()` or a batch of strings `(B,)`.

    Returns:
        int32 ids: `(n,)` for a scalar, a `tf.RaggedTensor` `(B, None)` for a batch.

    Example:

    ```python
    tokenizer = keras_brt.data.ByteTokenizer()
    ids = tokenizer(tf.constant("def f():"))
    text = tokenizer.detokenize(ids.numpy())
    ```
    """

    pad_id, bos_id, eos_id = 0, 1, 2
    offset = 3

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        self.vocabulary_size = 256 + self.offset

    def __call__(self, inputs):
        # A TensorFlow preprocessing layer: it runs inside tf.data whatever the
        # Keras backend, so it skips Keras's conversion of inputs to backend
        # tensors (strings have no JAX type), as KerasHub's tokenizers do.
        if not self.built:
            self.build(None)
        return self.call(inputs)

    def call(self, inputs):
        inputs = tf.convert_to_tensor(inputs, tf.string)
        pieces = tf.strings.bytes_split(inputs)

        def to_ids(single_bytes):
            return tf.cast(tf.reshape(tf.io.decode_raw(single_bytes, tf.uint8), [-1]), tf.int32) + self.offset

        if isinstance(pieces, tf.RaggedTensor):
            return tf.ragged.map_flat_values(to_ids, pieces)
        return to_ids(pieces)

    def tokenize(self, inputs):
        return self(inputs)

    def detokenize(self, ids):
        """Python text of a 1-D id sequence; special ids are dropped."""
        ids = np.asarray(ids).reshape(-1)
        data = bytes(int(i) - self.offset for i in ids if i >= self.offset)
        return data.decode("utf-8", errors="replace")

    def bytes_per_token(self, text):
        return 1.0

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(tuple(inputs.shape) + (None,), dtype="int32")
