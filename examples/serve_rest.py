"""Stream a long document through TF Serving's REST API, chunk by chunk, carrying the state.

1. Export a trained run (or, to try this out, a random tiny model):

       keras-brt export runs/latest /tmp/brt                # writes /tmp/brt/1/
       python examples/serve_rest.py --export-tiny /tmp/brt # the same for a tiny random model

2. Serve it (the stock image links tensorflow-text's ops, needed by the text signatures):

       docker run --rm -p 8501:8501 -v /tmp/brt:/models/brt -e MODEL_NAME=brt tensorflow/serving
       # or: tensorflow_model_server --rest_api_port=8501 --model_name=brt --model_base_path=/tmp/brt
       # or, with pip only (KServe's Python server, the same REST protocol):
       #     keras-brt serve /tmp/brt/1 --model-name brt --port 8501

3. Stream a document:

       python examples/serve_rest.py --url http://localhost:8501/v1/models/brt --text-file book.txt

The client only speaks JSON: `tokenize` turns the text into ids, `initial_state`
gives the fresh state, and each `step` request sends one chunk of whole blocks
with the state from the previous answer, which comes back under the same names.
The server keeps nothing between requests.

Without `--url` the script loads the SavedModel itself (`--model-dir`) and answers
each JSON body the way TF Serving's REST API does (columnar `inputs` in,
`outputs` back), so every body it prints is checked against the real signature.
`--show-bodies` prints the first `step` body (state values shortened).

This client imports TensorFlow only to play the server locally; it never imports
keras_brt (except for `--export-tiny`).
"""

import argparse
import json
import os
import urllib.request

import numpy as np


def post(url, body):
    """One REST `:predict` call, as TF Serving answers it."""
    request = urllib.request.Request(f"{url}:predict", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)["outputs"]


class LocalServer:
    """Answers REST bodies from a loaded SavedModel, as TF Serving would."""

    def __init__(self, model_dir):
        import tensorflow as tf

        self.tf = tf
        self.signatures = tf.saved_model.load(model_dir).signatures

    def predict(self, body):
        function = self.signatures[body.get("signature_name", "serving_default")]
        specs = function.structured_input_signature[1]
        inputs = {name: self.tf.constant(value, dtype=specs[name].dtype)
                  for name, value in body["inputs"].items()}
        return {name: value.numpy().tolist() for name, value in function(**inputs).items()}


def block_size_of(predict):
    """The block size W, from the fresh state's keys `(batch, W, heads, head_dim)`: every
    server answers this (TF Serving's `/metadata` is not part of KServe's protocol)."""
    state = predict({"signature_name": "initial_state", "inputs": {"batch_size": 1}})
    return len(state["layer_0_keys"][0])


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def stream(predict, block_size, text, blocks_per_request, show_bodies=False):
    """Bits per token of `text`, streamed through `step`; and `score_text`'s answer."""
    tokens = predict({"signature_name": "tokenize", "inputs": {"text": [text]}})
    ids = tokens["token_ids"][0][: tokens["lengths"][0]]  # BOS first
    state = predict({"signature_name": "initial_state", "inputs": {"batch_size": 1}})
    chunk = block_size * blocks_per_request
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, chunk):
        inputs = ids[start:start + chunk]
        targets = ids[start + 1:start + chunk + 1]
        body = {"signature_name": "step", "inputs": {"token_ids": [inputs], **state}}
        if show_bodies and start == 0:
            shown = {k: (v if k == "token_ids" else f"<{np.shape(v)} floats>")
                     for k, v in body["inputs"].items()}
            print(json.dumps({"signature_name": "step", "inputs": shown}))
        outputs = predict(body)
        state = {name: outputs[name] for name in state}
        log_probs = log_softmax(outputs["logits"])[0]  # (T, V)
        total -= sum(log_probs[i, t] for i, t in enumerate(targets))
        count += len(targets)
    streamed = total / max(count, 1) / np.log(2)
    whole = predict({"signature_name": "score_text", "inputs": {"text": [text]}})["bits_per_token"][0]
    return streamed, whole, count


def export_tiny(path):
    import keras_brt
    from keras_brt.data import ByteTokenizer
    from keras_brt.export import export_saved_model

    lm = keras_brt.models.BlockRecurrentTransformerCausalLM.from_preset("tiny_rec_fixed_skip")
    return export_saved_model(lm, path, tokenizer=ByteTokenizer(), overwrite=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="e.g. http://localhost:8501/v1/models/brt")
    parser.add_argument("--model-dir", default=None, help="a SavedModel version dir, served locally")
    parser.add_argument("--export-tiny", default=None, metavar="BASE",
                        help="export a random tiny model to BASE/1 and serve it locally")
    parser.add_argument("--text", default=None)
    parser.add_argument("--text-file", default=None)
    parser.add_argument("--blocks-per-request", type=int, default=2)
    parser.add_argument("--show-bodies", action="store_true")
    args = parser.parse_args()

    if args.export_tiny:
        args.model_dir = export_tiny(args.export_tiny)
        print(f"exported a tiny random model to {args.model_dir}")
    if args.url:
        predict = lambda body: post(args.url, body)  # noqa: E731
    elif args.model_dir:
        predict = LocalServer(args.model_dir).predict
    else:
        parser.error("give --url, --model-dir or --export-tiny")
    block_size = block_size_of(predict)
    if args.text_file:
        with open(args.text_file, encoding="utf-8") as f:
            text = f.read()
    else:
        text = args.text or open(os.path.abspath(__file__), encoding="utf-8").read()
    streamed, whole, count = stream(predict, block_size, text, args.blocks_per_request, args.show_bodies)
    print(f"{count} tokens in requests of {block_size * args.blocks_per_request} tokens "
          f"(block size {block_size})")
    print(f"bits per token, streamed through step: {streamed:.5f}; score_text on the whole: {whole:.5f}")


if __name__ == "__main__":
    main()
