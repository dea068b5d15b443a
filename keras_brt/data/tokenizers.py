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
        if inputs.shape.rank == 0:  # One document: its bytes at once (30x faster than a split).
            return tf.cast(tf.io.decode_raw(inputs, tf.uint8), tf.int32) + self.offset
        pieces = tf.strings.bytes_split(inputs)

        def to_ids(single_bytes):
            return tf.cast(tf.reshape(tf.io.decode_raw(single_bytes, tf.uint8), [-1]), tf.int32) + self.offset

        if isinstance(pieces, tf.RaggedTensor):
            return tf.ragged.map_flat_values(to_ids, pieces)
        return to_ids(pieces)

    def tokenize(self, inputs):
        return self(inputs)

    def detokenize(self, ids):
        """Python text of a 1-D id sequence; special ids and ids outside the vocabulary
        (such as the padding ids 259 to 263 of a model of 264 ids) decode to nothing."""
        ids = np.asarray(ids).reshape(-1)
        data = bytes(int(i) - self.offset for i in ids if self.offset <= i < self.vocabulary_size)
        return data.decode("utf-8", errors="replace")

    def bytes_per_token(self, text):
        return 1.0

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(tuple(inputs.shape) + (None,), dtype="int32")


def train_sentencepiece(documents, vocabulary_size=4096, model_type="unigram", max_lines=200_000):
    """Trains a SentencePiece model on documents with the `sentencepiece` package.

    The model keeps text exactly (identity normalisation, whitespace kept,
    byte fallback for anything unseen) so code and books round-trip, and uses
    the ids `0` = padding, `1` = BOS, `2` = EOS, `3` = unknown.

    Args:
        documents: an iterable of `str`.
        vocabulary_size: number of pieces (at most; a small corpus may give fewer).
        model_type: `"unigram"` or `"bpe"`.
        max_lines: cap on the training lines, taken in document order (the
            training is deterministic for the same documents).

    Returns:
        The serialized model proto (`bytes`).
    """
    import io

    import sentencepiece

    if vocabulary_size < 300:
        raise ValueError(
            "`vocabulary_size` must be at least 300 (256 byte-fallback pieces plus specials). "
            f"Received: vocabulary_size={vocabulary_size}"
        )

    def lines():
        count = 0
        for text in documents:
            for line in text.split("\n"):
                if line.strip():
                    yield line
                    count += 1
                    if count >= max_lines:
                        return

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=lines(),
        model_writer=model,
        vocab_size=vocabulary_size,
        model_type=model_type,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        user_defined_symbols=["\n", "\t"],
        allow_whitespace_only_pieces=True,
        character_coverage=0.9995,
        hard_vocab_limit=False,  # A small corpus may support fewer pieces: take what it has.
        minloglevel=2,
    )
    return model.getvalue()


@keras.saving.register_keras_serializable(package="keras_brt")
class SentencePieceTokenizer(keras.layers.Layer):
    """SentencePiece through `tensorflow_text.SentencepieceTokenizer`, usable in tf.data.

    The serialized model proto travels inside the layer's config (base64), so
    the tokenizer is never lost when a config or a `.keras` file is saved;
    `save_model(path)` also writes the plain `.model` file.

    Args:
        proto: the serialized SentencePiece model (`bytes`, or a base64 `str`
            as stored in the config). See `train_sentencepiece`.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: a string scalar `()` or a batch `(B,)`.

    Returns:
        int32 ids: `(n,)` for a scalar, a `tf.RaggedTensor` for a batch.

    Example:

    ```python
    proto = keras_brt.data.train_sentencepiece(texts, vocabulary_size=1000)
    tokenizer = keras_brt.data.SentencePieceTokenizer(proto)
    ids = tokenizer(tf.constant("def f():"))
    ```
    """

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, proto, **kwargs):
        import base64

        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        if isinstance(proto, str):
            proto = base64.b64decode(proto)
        if not isinstance(proto, (bytes, bytearray)) or not proto:
            raise ValueError(
                "`proto` must be a serialized SentencePiece model (bytes). "
                f"Received: proto of type {type(proto).__name__}"
            )
        self.proto = bytes(proto)
        import tensorflow_text

        self._tokenizer = tensorflow_text.SentencepieceTokenizer(model=self.proto, out_type=tf.int32)
        self.vocabulary_size = int(self._tokenizer.vocab_size())

    def __call__(self, inputs):
        # Runs in tf.data whatever the Keras backend (see ByteTokenizer).
        if not self.built:
            self.build(None)
        return self.call(inputs)

    def call(self, inputs):
        return self._tokenizer.tokenize(tf.convert_to_tensor(inputs, tf.string))

    def tokenize(self, inputs):
        return self(inputs)

    def detokenize(self, ids):
        """Python text of a 1-D id sequence; padding, specials and ids outside the
        vocabulary decode to nothing."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)
               if self.eos_id < int(i) < self.vocabulary_size]
        return self._tokenizer.detokenize(tf.constant(ids, tf.int32)).numpy().decode("utf-8", "replace")

    def save_model(self, path):
        with open(path, "wb") as f:
            f.write(self.proto)

    def get_config(self):
        import base64

        config = super().get_config()
        config["proto"] = base64.b64encode(self.proto).decode("ascii")
        return config

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(tuple(inputs.shape) + (None,), dtype="int32")
