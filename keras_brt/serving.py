"""Serve an exported SavedModel over TF Serving's REST protocol with KServe's Python server.

    keras-brt serve /tmp/brt/1 --model-name brt --port 8501
    # then: POST http://localhost:8501/v1/models/brt:predict   (KServe's V1 = TF Serving's REST)

`SavedModelPredictor` is a `kserve.Model`: each `:predict` body names a signature
(`serving_default`, `initial_state`, `step`, `score_text`, `tokenize`) and gives its
inputs, columnar (`{"inputs": {name: value}}`, answered `{"outputs": {...}}`) or
row by row (`{"instances": [{name: value}, ...]}`, answered `{"predictions": [...]}`),
as TF Serving's REST API does. The server keeps nothing between requests: a
document is streamed through `step` with the state each answer returns. Every input
is checked against the signature before the model runs (name, type, rank and sizes,
token ids within the vocabulary, a body within `max_body_bytes`); a bad request is
answered 4xx with a message naming the field, and the server keeps serving.

The work of a request is bounded before the model runs, by limits the operator sets
(`serve(...)`'s arguments, `keras-brt serve`'s flags), each refused with 400 naming
the field, the value received and the limit:

- `max_batch_size`: rows of a request (`initial_state`'s `batch_size`, the rows of
  `token_ids` or `text`, the entries of `instances`);
- `max_tokens_per_request`: rows x tokens (`token_ids`' shape; a text counts as its
  UTF-8 bytes + 2, padded to the longest text: the BOS and SentencePiece's leading
  piece; no tokenizer of keras_brt makes more);
- `max_response_bytes`: the answer's JSON size, estimated from the request and the
  signature's output shapes as an upper bound (25 bytes a float: orjson writes a
  float32 in at most 24 characters; e.g. `logits` is rows x tokens x vocabulary of
  them). `score_text` computes the rows x tokens x vocabulary log-probabilities it
  reduces: they count as if answered.

Needs `pip install kserve` (the `serve` extra); TensorFlow runs the model, so the
Keras backend does not matter here.
"""

import asyncio
import re
import sys

import numpy as np
import tensorflow as tf

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_BATCH_SIZE = 256
DEFAULT_MAX_TOKENS_PER_REQUEST = 65536
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
FLAGS = {"max_body_bytes": "--max-body-bytes", "max_batch_size": "--max-batch-size",
         "max_tokens_per_request": "--max-tokens-per-request",
         "max_response_bytes": "--max-response-bytes"}

# Scalar inputs that set a request's rows (the signature makes that many lanes).
ROW_COUNT_INPUTS = ("batch_size",)
# Tokens a text may become beyond one per UTF-8 byte: the BOS, and SentencePiece's leading
# "▁" (keras_brt's SentencePiece models fall back to bytes, so no piece is shorter than a byte).
TEXT_EXTRA_TOKENS = 2
# Signatures that compute (rows, tokens, vocabulary) scores they reduce before answering.
HIDDEN_SCORES = ("score_text",)
# The most bytes one float takes in the JSON answer (orjson, with its comma): the shortest
# text that reads back as the same float32 or float64 is at most 24 characters
# ("-1.1754943508222875e-38").
JSON_FLOAT_BYTES = 25


def request_limits(max_body_bytes=None, max_batch_size=None, max_tokens_per_request=None,
                   max_response_bytes=None):
    """The request limits of a server, None taking the default; each checked to be >= 1.

    Args:
        max_body_bytes: the largest request body (413 above it). Default 4 MiB.
        max_batch_size: the most rows a request may have or ask for. Default 256.
        max_tokens_per_request: the most tokens (rows x tokens per row) of a request.
            Default 65536.
        max_response_bytes: the largest answer, as estimated from the request before the
            model runs. Default 64 MiB.

    Returns:
        A dict of the four limits, keyword arguments of `SignatureRunner` and `make_model`.
    """
    given = {"max_body_bytes": max_body_bytes, "max_batch_size": max_batch_size,
             "max_tokens_per_request": max_tokens_per_request,
             "max_response_bytes": max_response_bytes}
    defaults = {"max_body_bytes": DEFAULT_MAX_BODY_BYTES, "max_batch_size": DEFAULT_MAX_BATCH_SIZE,
                "max_tokens_per_request": DEFAULT_MAX_TOKENS_PER_REQUEST,
                "max_response_bytes": DEFAULT_MAX_RESPONSE_BYTES}
    for name, value in given.items():
        if value is None:
            given[name] = defaults[name]
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` ({FLAGS[name]}) must be an integer >= 1. "
                             f"Received: {name}={value!r}")
    return given


class RequestError(ValueError):
    """A request the server refuses, with its HTTP status (400, or 413 for a body too large)."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


class SignatureRunner:
    """Checks REST inputs against a SavedModel's signatures and runs them (no server).

    Args:
        model_dir: the SavedModel (a version folder, e.g. `/tmp/brt/1`).
        max_body_bytes: the largest request body accepted (state travels in it:
            raise it for large models).
        max_batch_size: the most rows a request may have (`token_ids`, `text`,
            `instances`) or ask for (`initial_state`'s `batch_size`).
        max_tokens_per_request: the most tokens of a request, rows x tokens per row
            (a text counts as its UTF-8 bytes + 2, padded to the longest).
        max_response_bytes: the largest answer, its JSON size estimated from the
            request before the model runs (see the module).
    """

    def __init__(self, model_dir, max_body_bytes=DEFAULT_MAX_BODY_BYTES,
                 max_batch_size=DEFAULT_MAX_BATCH_SIZE,
                 max_tokens_per_request=DEFAULT_MAX_TOKENS_PER_REQUEST,
                 max_response_bytes=DEFAULT_MAX_RESPONSE_BYTES):
        checked = request_limits(max_body_bytes, max_batch_size, max_tokens_per_request,
                                 max_response_bytes)
        self.max_body_bytes = checked["max_body_bytes"]
        self.max_batch_size = checked["max_batch_size"]
        self.max_tokens_per_request = checked["max_tokens_per_request"]
        self.max_response_bytes = checked["max_response_bytes"]
        self.signatures = tf.saved_model.load(model_dir).signatures
        # The vocabulary size: the last axis of the (B, T, V) scores `serving_default` answers.
        default = self.signatures.get("serving_default")
        self.vocabulary_size = max(
            (spec.shape[-1] for spec in (default.structured_outputs.values() if default else ())
             if spec.shape.rank == 3 and spec.shape[-1] is not None), default=None)

    def check_size(self, content_length):
        """Refuses a body over `max_body_bytes` by its Content-Length. KServe has read and
        parsed the body by then: this bounds the work a request gets, not the reading;
        put a limit in the proxy in front of the server too."""
        if content_length is None:
            return
        if not str(content_length).isdigit():
            raise RequestError(f"The Content-Length header must be a byte count. "
                               f"Received: {content_length!r}")
        if int(content_length) > self.max_body_bytes:
            raise RequestError(
                f"The request body is {int(content_length)} bytes; this server takes at most "
                f"{self.max_body_bytes} (--max-body-bytes).", status=413)

    def _inputs(self, body):
        """`(signature name, {input: array}, row format?)` of a REST body, checked."""
        if not isinstance(body, dict):
            raise RequestError(f"The body must be a JSON object. Received: {type(body).__name__}")
        name = body.get("signature_name", "serving_default")
        if name not in self.signatures:
            raise RequestError(
                f"Unknown signature_name {name!r}; this model serves {sorted(self.signatures)}.")
        if ("inputs" in body) == ("instances" in body):
            raise RequestError("The body must hold exactly one of `inputs` (columnar) or "
                               f"`instances` (rows). Received keys: {sorted(body)}")
        specs = self.signatures[name].structured_input_signature[1]
        rows = "instances" in body
        values = body["instances"] if rows else body["inputs"]
        if rows:
            if not isinstance(values, list) or not values or not all(isinstance(v, dict) for v in values):
                raise RequestError("`instances` must be a non-empty list of objects, one per row. "
                                   f"Received: {type(values).__name__}")
            keys = sorted(values[0])
            for index, row in enumerate(values):
                if sorted(row) != keys:
                    raise RequestError(f"Every row of `instances` must name the same inputs: row 0 "
                                       f"names {keys}. Received: row {index} names {sorted(row)}")
            values = {key: [row[key] for row in values] for key in keys}
        elif not isinstance(values, dict):
            if len(specs) != 1:
                raise RequestError(f"`inputs` must be an object naming {sorted(specs)}. "
                                   f"Received: {type(values).__name__}")
            values = {next(iter(specs)): values}
        missing, unknown = sorted(set(specs) - set(values)), sorted(set(values) - set(specs))
        if missing or unknown:
            raise RequestError(
                f"Signature {name!r} takes the inputs {sorted(specs)}. "
                + (f"Missing: {missing}. " if missing else "")
                + (f"Unknown: {unknown}." if unknown else ""))
        return name, {key: self._array(key, values[key], specs[key]) for key in specs}, rows

    @staticmethod
    def _array(key, value, spec):
        """The numpy array of input `key`'s JSON `value`, checked against its `spec`."""
        if spec.dtype == tf.string:
            # Strings stay Python objects: numpy's own text arrays pad every string to the
            # longest one, which would turn one long text among many short ones into a
            # rows x longest allocation.
            try:
                array = np.asarray(value, dtype=object)
            except ValueError:
                array = np.asarray(None, dtype=object)
            wrong = next((v for v in array.flat if not isinstance(v, str)), None)
            if not array.size or wrong is not None:
                raise RequestError(
                    f"Input {key!r} must be a rectangular array of strings. Received: "
                    + ("no strings" if not array.size else f"a value of type {type(wrong).__name__}"))
        else:
            try:
                array = np.asarray(value)
            except ValueError:
                array = None
            if array is None or array.dtype == object:
                raise RequestError(f"Input {key!r} must be a rectangular array of numbers (or "
                                   "strings). Received: lists of different lengths or mixed types")
            kind = array.dtype.kind
            if spec.dtype.is_integer:
                ok = kind in "iu" or (kind == "f" and array.size == 0)
            else:
                ok = kind in "iuf"
            if not ok:
                raise RequestError(f"Input {key!r} must hold {spec.dtype.name} values. "
                                   f"Received: {array.dtype.name}")
        expected = spec.shape
        if expected.rank is not None and (array.ndim != expected.rank or any(
                want is not None and want != got for want, got in zip(expected.as_list(), array.shape))):
            raise RequestError(f"Input {key!r} must have the shape {tuple(expected.as_list())} "
                               f"(None: any size). Received: {array.shape}")
        if spec.dtype.is_integer and array.size and (
                array.min() < spec.dtype.min or array.max() > spec.dtype.max):
            raise RequestError(f"Input {key!r} must hold {spec.dtype.name} values. "
                               f"Received: values from {array.min()} to {array.max()}")
        return array

    def _extent(self, arrays, rows_format):
        """`(rows, tokens per row)` of a request's checked inputs, each refused over its limit.

        The rows are the first axis of every input (the signature checks that they agree)
        or the value of a row-count scalar (`batch_size`); the tokens per row are the
        second axis of integer inputs of rank 2 (`token_ids`), or the longest text's UTF-8
        bytes + `TEXT_EXTRA_TOKENS` (texts are padded to the longest).
        """
        rows, tokens = 0, 0
        for key, array in arrays.items():
            if array.ndim:
                count = array.shape[0]
                what, received = ((f"`instances` holds {count} rows", f"{count} instances")
                                  if rows_format else
                                  (f"Input {key!r} has {count} rows", _described(key, array)))
            elif key in ROW_COUNT_INPUTS and array.dtype.kind in "iu":
                count = int(array)
                what, received = f"Input {key!r} asks for {count} rows", f"{key}={count}"
            else:
                continue
            if count > self.max_batch_size:
                raise RequestError(f"{what}; this server takes at most {self.max_batch_size} "
                                   f"a request (--max-batch-size). Received: {received}")
            rows = max(rows, count)
        for key, array in arrays.items():
            if array.dtype == object and array.ndim:
                per_row = (max(len(text.encode("utf-8")) for text in array.flat)
                           + TEXT_EXTRA_TOKENS) * (array.size // len(array))
            elif array.ndim >= 2 and array.dtype.kind in "iu":
                per_row = array.size // len(array)
            else:
                continue
            if len(array) * per_row > self.max_tokens_per_request:
                raise RequestError(
                    f"Input {key!r} holds {len(array) * per_row} tokens (rows x tokens: "
                    f"{len(array)} x {per_row}); this server takes at most "
                    f"{self.max_tokens_per_request} a request (--max-tokens-per-request). "
                    f"Received: {_described(key, array)}")
            tokens = max(tokens, per_row)
        return rows, tokens

    def answer_bytes(self, name, rows, tokens):
        """An upper bound of the JSON answer's bytes for `rows` x `tokens` of signature `name`.

        Each output's unknown axes are the rows (the first) and the tokens (any other);
        a float counts `JSON_FLOAT_BYTES`, an integer its longest text plus a comma, a
        bool 6, every JSON list 3 (brackets and comma) and each output's name once per
        row. The scores of `HIDDEN_SCORES` count as float outputs of shape
        (rows, tokens, vocabulary).

        Returns:
            `(bytes, the largest output: (name, shape, dtype name))`.
        """
        outputs = [(key, spec.shape.as_list(), spec.dtype)
                   for key, spec in self.signatures[name].structured_outputs.items()]
        if name in HIDDEN_SCORES and self.vocabulary_size:
            outputs.append(("the log-probabilities it computes", [None, None, self.vocabulary_size],
                            tf.float32))
        total, largest = 0, (0, None)
        for key, shape, dtype in outputs:
            shape = [rows if axis == 0 else max(tokens, 1) if size is None else size
                     for axis, size in enumerate(shape)]
            if dtype.is_floating:
                each = JSON_FLOAT_BYTES
            elif dtype.is_integer:
                each = len(str(dtype.min)) + 1
            elif dtype == tf.bool:
                each = len("false,")
            else:  # No signature of `export_saved_model` answers strings.
                each = JSON_FLOAT_BYTES
            lists = sum(int(np.prod(shape[:axis])) for axis in range(len(shape)))
            size = int(np.prod(shape)) * each + 3 * lists + (len(key) + 6) * max(rows, 1)
            total += size
            largest = max(largest, (size, (key, tuple(shape), dtype.name)))
        return total, largest[1]

    def _check_limits(self, name, arrays, rows_format):
        """Refuses a request over `max_batch_size` or `max_tokens_per_request`, or whose
        answer would exceed `max_response_bytes`, before anything of its size is made.

        Returns:
            The answer's estimated bytes (see `answer_bytes`).
        """
        rows, tokens = self._extent(arrays, rows_format)
        size, (key, shape, dtype) = self.answer_bytes(name, rows, tokens)
        if size > self.max_response_bytes:
            # The inputs that set the size: the ids, texts and row counts (not the state).
            received = ", ".join(_described(k, a) for k, a in sorted(arrays.items())
                                 if a.dtype.kind in "iuO")
            raise RequestError(
                f"The answer of signature {name!r} would take up to {size} bytes of JSON, the "
                f"largest part {key} of shape {shape} ({dtype}); this server answers at most "
                f"{self.max_response_bytes} bytes (--max-response-bytes). Received: {received}")
        return size

    def predict(self, body):
        """The REST answer to `body` (a parsed `:predict` request)."""
        name, arrays, rows = self._inputs(body)
        self._check_limits(name, arrays, rows)
        specs = self.signatures[name].structured_input_signature[1]
        inputs = {key: tf.constant(array, dtype=specs[key].dtype) for key, array in arrays.items()}
        try:
            outputs = self.signatures[name](**inputs)
        except tf.errors.InvalidArgumentError as error:
            # The signature's own checks: token ids outside the vocabulary, a state whose
            # batch differs from the token ids', an empty batch.
            found = re.search(r"assertion failed: \[([^\]]+)\]", error.message)
            message = found.group(1) if found else error.message.strip().splitlines()[-1]
            raise RequestError(f"Signature {name!r} refused its inputs: {message}") from None
        outputs = {key: value.numpy() for key, value in outputs.items()}
        if rows:
            if any(np.ndim(value) == 0 for value in outputs.values()):
                raise RequestError(f"Signature {name!r} answers with scalars, which have no rows; "
                                   "send `inputs` instead. Received: `instances`")
            count = len(next(iter(outputs.values())))
            return {"predictions": [{key: _json(value[i]) for key, value in outputs.items()}
                                    for i in range(count)]}
        return {"outputs": {key: _json(value) for key, value in outputs.items()}}


def _described(key, array):
    """How a request error shows the input `key` it received: a scalar's value, an
    array's shape (and the longest text's UTF-8 bytes)."""
    if array.ndim == 0:
        return f"{key}={array.item()!r}"
    if array.dtype == object:
        longest = max(len(text.encode("utf-8")) for text in array.flat)
        return f"{key} of shape {array.shape}, the longest {longest} UTF-8 bytes"
    return f"{key} of shape {array.shape}"


def _json(value):
    value = np.asarray(value)
    if value.dtype.kind in "SO":
        return np.vectorize(lambda v: v.decode("utf-8", "replace"))(value).tolist()
    return value.tolist()


def make_model(name, model_dir, **limits):
    """A `kserve.Model` named `name` serving the SavedModel `model_dir` (see the module).

    Args:
        name: the model's name in `/v1/models/<name>:predict`.
        model_dir: the SavedModel (a version folder).
        **limits: `SignatureRunner`'s request limits (`max_body_bytes`, `max_batch_size`,
            `max_tokens_per_request`, `max_response_bytes`); the defaults where left out.
    """
    import kserve
    from fastapi import HTTPException

    class SavedModelPredictor(kserve.Model):
        def __init__(self):
            super().__init__(name)
            self.runner = None
            self.load()

        def load(self):
            self.runner = SignatureRunner(model_dir, **limits)
            self.ready = True
            return self.ready

        async def predict(self, payload, headers=None, response_headers=None):
            try:
                self.runner.check_size((headers or {}).get("content-length"))
                # TensorFlow releases the GIL: requests run side by side in threads.
                return await asyncio.get_running_loop().run_in_executor(
                    None, self.runner.predict, payload)
            except RequestError as error:
                raise HTTPException(status_code=error.status, detail=str(error)) from None

    return SavedModelPredictor()


def serve(model_dir, model_name="brt", port=8501, max_body_bytes=None, max_batch_size=None,
          max_tokens_per_request=None, max_response_bytes=None):
    """Serves the SavedModel at `http://0.0.0.0:port/v1/models/<model_name>:predict` until
    stopped. A request over a limit is refused (400, or 413 for the body) before the model
    runs, naming the field; the server keeps serving.

    Args:
        model_dir: the SavedModel (a version folder, e.g. `/tmp/brt/1`).
        model_name: the name in the URL.
        port: the HTTP port.
        max_body_bytes: the largest request body; None: `DEFAULT_MAX_BODY_BYTES` (4 MiB).
        max_batch_size: the most rows a request may have or ask for; None:
            `DEFAULT_MAX_BATCH_SIZE` (256).
        max_tokens_per_request: the most tokens (rows x tokens) of a request; None:
            `DEFAULT_MAX_TOKENS_PER_REQUEST` (65536).
        max_response_bytes: the largest answer, estimated from the request; None:
            `DEFAULT_MAX_RESPONSE_BYTES` (64 MiB).
    """
    checked = request_limits(max_body_bytes, max_batch_size, max_tokens_per_request,
                             max_response_bytes)
    import kserve

    model = make_model(model_name, model_dir, **checked)
    kserve.ModelServer(http_port=port, enable_grpc=False).start([model])


if __name__ == "__main__":  # `python -m keras_brt.serving DIR ...` is `keras-brt serve DIR ...`
    from keras_brt import cli

    sys.exit(cli.main(["serve", *sys.argv[1:]]))
