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

Needs `pip install kserve` (the `serve` extra); TensorFlow runs the model, so the
Keras backend does not matter here.
"""

import asyncio
import re
import sys

import numpy as np
import tensorflow as tf

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


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
    """

    def __init__(self, model_dir, max_body_bytes=DEFAULT_MAX_BODY_BYTES):
        self.signatures = tf.saved_model.load(model_dir).signatures
        self.max_body_bytes = max_body_bytes

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
        try:
            array = np.asarray(value)
        except ValueError:
            array = None
        if array is None or array.dtype == object:
            raise RequestError(f"Input {key!r} must be a rectangular array of numbers (or strings). "
                               "Received: lists of different lengths or mixed types")
        kind = array.dtype.kind
        if spec.dtype == tf.string:
            ok = kind in "US"
        elif spec.dtype.is_integer:
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
        return tf.constant(array, dtype=spec.dtype)

    def predict(self, body):
        """The REST answer to `body` (a parsed `:predict` request)."""
        name, inputs, rows = self._inputs(body)
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


def _json(value):
    value = np.asarray(value)
    if value.dtype.kind in "SO":
        return np.vectorize(lambda v: v.decode("utf-8", "replace"))(value).tolist()
    return value.tolist()


def make_model(name, model_dir, max_body_bytes=DEFAULT_MAX_BODY_BYTES):
    """A `kserve.Model` named `name` serving the SavedModel `model_dir` (see the module)."""
    import kserve
    from fastapi import HTTPException

    class SavedModelPredictor(kserve.Model):
        def __init__(self):
            super().__init__(name)
            self.runner = None
            self.load()

        def load(self):
            self.runner = SignatureRunner(model_dir, max_body_bytes)
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


def serve(model_dir, model_name="brt", port=8501, max_body_bytes=None):
    """Serves the SavedModel at `http://0.0.0.0:port/v1/models/<model_name>:predict` until
    stopped; `max_body_bytes` None is `DEFAULT_MAX_BODY_BYTES`."""
    import kserve

    model = make_model(model_name, model_dir,
                       DEFAULT_MAX_BODY_BYTES if max_body_bytes is None else max_body_bytes)
    kserve.ModelServer(http_port=port, enable_grpc=False).start([model])


if __name__ == "__main__":  # `python -m keras_brt.serving DIR ...` is `keras-brt serve DIR ...`
    from keras_brt import cli

    sys.exit(cli.main(["serve", *sys.argv[1:]]))
