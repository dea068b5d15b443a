"""A client of an exported SavedModel that never imports keras_brt (nor Keras).

    python tests/serving_client.py SAVED_MODEL_DIR REQUESTS.npz RESPONSES.npz

It does what a TF Serving client does: fresh state from `initial_state`, a
document streamed through `step` chunk by chunk, `serving_default` at two batch
sizes, `score_text` on strings, and bad requests (their error messages are
recorded). Run as a file, so the repository is not on its path.
"""

import json
import sys

import numpy as np
import tensorflow as tf


def error_of(function, **inputs):
    try:
        function(**inputs)
    except Exception as error:  # Recorded for the test to check.
        return f"{type(error).__name__}: {error}"
    return None


def main(saved_model, requests, responses):
    loaded = tf.saved_model.load(saved_model)
    signatures = loaded.signatures
    request = np.load(requests)
    ids, chunks = request["token_ids"], [int(c) for c in request["chunks"]]
    out = {"signatures": np.array(sorted(signatures))}

    state = signatures["initial_state"](batch_size=tf.constant(ids.shape[0]))
    state_names = sorted(state)
    logits, start = [], 0
    for size in chunks:
        result = signatures["step"](token_ids=tf.constant(ids[:, start:start + size]), **state)
        state = {name: result[name] for name in state_names}
        logits.append(result["logits"].numpy())
        start += size
        if start == sum(chunks[:-1]):  # State after the whole blocks, before the last chunk.
            out.update({f"state/{name}": value.numpy() for name, value in state.items()})
    out["streamed_logits"] = np.concatenate(logits, axis=1)
    out["default_logits"] = signatures["serving_default"](token_ids=tf.constant(ids))["logits"].numpy()
    out["default_logits_row0"] = signatures["serving_default"](
        token_ids=tf.constant(ids[:1, :5]))["logits"].numpy()

    if "score_text" in signatures:
        scored = signatures["score_text"](text=tf.constant([t.encode() for t in request["texts"]]))
        out.update({f"text/{k}": v.numpy() for k, v in scored.items()})

    fresh = signatures["initial_state"](batch_size=tf.constant(ids.shape[0]))
    name = state_names[0]
    short_batch = {**fresh, name: fresh[name][:-1]}
    wrong_shape = {**fresh, name: tf.concat([fresh[name], fresh[name][:, :1]], axis=1)}
    errors = {
        "state_batch": error_of(signatures["step"], token_ids=tf.constant(ids[:, :4]), **short_batch),
        "state_shape": error_of(signatures["step"], token_ids=tf.constant(ids[:, :4]), **wrong_shape),
        "out_of_vocabulary": error_of(signatures["serving_default"],
                                      token_ids=tf.constant([[1, 2, int(request["vocabulary_size"])]])),
        "missing_state": error_of(signatures["step"], token_ids=tf.constant(ids[:, :4]),
                                  **{k: v for k, v in fresh.items() if k != name}),
        "no_tokens": error_of(signatures["step"], token_ids=tf.constant(ids[:, :0]), **fresh),
        "one_dimensional": error_of(signatures["step"], token_ids=tf.constant(ids[0, :4]), **fresh),
        "rank_5_state": error_of(signatures["step"], token_ids=tf.constant(ids[:, :4]),
                                 **{**fresh, name: fresh[name][:, None]}),
        "int64_method": error_of(lambda **kw: loaded.step(kw.pop("token_ids"), kw),
                                 token_ids=tf.constant(ids[:, :4], tf.int64), **fresh),
        "float_method": error_of(lambda **kw: loaded.step(kw.pop("token_ids"), kw),
                                 token_ids=tf.constant(ids[:, :4], tf.float32), **fresh),
    }
    out["errors"] = np.array(json.dumps(errors))
    out["state_names"] = np.array(state_names)
    out["imported"] = np.array(sorted(m for m in sys.modules if m.split(".")[0] == "keras_brt"))
    np.savez(responses, **out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
