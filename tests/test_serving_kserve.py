"""The exported SavedModel served over real HTTP on loopback by KServe's model server, which
speaks TF Serving's REST protocol (`/v1/models/NAME:predict`): many clients at once, bad
requests, and the REST example against it."""

import concurrent.futures
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import keras
import numpy as np
import pytest

from keras_brt.data import ByteTokenizer
from tests.models.common import W, make_lm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 259
STREAMS = 32
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                       reason="export traces the model with the TensorFlow backend"),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def predict(url, body, raw=None):
    """`(status, answer)` of one `:predict` request."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}:predict", data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


# The server's limits, set lower than the defaults (256 rows, 65536 tokens, 64 MiB) so that
# its answers show the flags taken.
MAX_BATCH_SIZE, MAX_TOKENS, MAX_RESPONSE_BYTES = 64, 4096, 4_000_000


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from keras_brt.export import export_saved_model

    keras.utils.set_random_seed(7)
    lm = make_lm(vocabulary_size=V)
    lm.build()
    return lm, export_saved_model(lm, str(tmp_path_factory.mktemp("served") / "brt"),
                                  tokenizer=ByteTokenizer())


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    lm, path = exported
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_brt.serving", path, "--model-name", "brt", "--port", str(port),
         "--max-body-bytes", str(2 ** 20), "--max-batch-size", str(MAX_BATCH_SIZE),
         "--max-tokens-per-request", str(MAX_TOKENS), "--max-response-bytes", str(MAX_RESPONSE_BYTES)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1/models/brt"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if json.load(response).get("ready"):
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if process.poll() is not None or time.time() > deadline:
                log.seek(0)
                pytest.fail(f"the server did not start:\n{log.read()[-3000:]}")
            time.sleep(0.5)
        yield lm, url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def stream(url, ids, chunk):
    """One client: fresh state, then the document chunk by chunk with the returned state."""
    status, answer = predict(url, {"signature_name": "initial_state", "inputs": {"batch_size": 1}})
    assert status == 200, answer
    state, logits = answer["outputs"], []
    for start in range(0, len(ids), chunk):
        status, answer = predict(url, {"signature_name": "step", "inputs": {
            "token_ids": [ids[start:start + chunk].tolist()], **state}})
        assert status == 200, answer
        outputs = answer["outputs"]
        logits.append(np.asarray(outputs.pop("logits"))[0])
        state = outputs
    return np.concatenate(logits)


def test_32_concurrent_streams_each_equal_call_with_state_on_its_document(server):
    lm, url = server
    rng = np.random.default_rng(0)
    documents = [rng.integers(3, V, W * int(rng.integers(3, 9)) + int(rng.integers(0, W)))
                 .astype("int32") for _ in range(STREAMS)]
    with concurrent.futures.ThreadPoolExecutor(STREAMS) as pool:
        streamed = list(pool.map(lambda ids: stream(url, ids, 2 * W), documents))
    for ids, logits in zip(documents, streamed):
        expected = np.asarray(lm.call_with_state(ids[None])[0])[0]
        np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_bad_requests_get_4xx_naming_the_field_and_the_server_keeps_serving(server):
    _, url = server
    status, answer = predict(url, {"signature_name": "initial_state", "inputs": {"batch_size": 2}})
    state = answer["outputs"]
    name = sorted(state)[0]
    ids = [[5] * W, [6] * W]
    wrong_width = {**state, name: np.zeros((2, W + 1) + np.shape(state[name])[2:]).tolist()}
    cases = {
        "token_ids": {"signature_name": "step", "inputs": {"token_ids": [5] * W, **state}},
        "int32": {"signature_name": "step", "inputs": {"token_ids": [[1.5] * W] * 2, **state}},
        f"vocabulary_size={V}": {"signature_name": "step",
                                 "inputs": {"token_ids": [[V + 4] * W] * 2, **state}},
        name: {"signature_name": "step", "inputs": {"token_ids": ids, **wrong_width}},
        f"Missing: ['{name}']": {"signature_name": "step", "inputs": {
            "token_ids": ids, **{k: v for k, v in state.items() if k != name}}},
        "signature_name": {"signature_name": "nope", "inputs": {"token_ids": ids}},
        "`inputs`": {"signature_name": "step"},
        "batch size of token_ids": {"signature_name": "step",
                                    "inputs": {"token_ids": ids[:1], **state}},
    }
    for expected, body in cases.items():
        status, answer = predict(url, body)
        assert 400 <= status < 500, (expected, status, answer)
        assert expected in json.dumps(answer), (expected, answer)
    big = json.dumps({"signature_name": "serving_default",
                      "inputs": {"token_ids": [[7] * 700_000]}}).encode()  # about 2 MB
    status, answer = predict(url, None, raw=big)
    assert status == 413 and "at most 1048576" in json.dumps(answer), (status, answer)
    status, answer = predict(url, {"signature_name": "serving_default",
                                   "instances": [{"token_ids": [5] * W}, {"token_ids": [6] * W}]})
    assert status == 200 and len(answer["predictions"]) == 2  # still serving, rows in and out


def refused(url, body, *expected, raw=None):
    """Sends a request over a limit: asserts 400 and an answer naming each of `expected`."""
    status, answer = predict(url, body, raw=raw)
    assert status == 400, (status, answer)
    for part in expected:
        assert part in answer["detail"], (part, answer)


def test_a_60_byte_request_for_100000_lanes_is_refused_naming_batch_size_and_the_server_keeps_serving(
        server):
    _, url = server
    body = b'{"signature_name":"initial_state","inputs":{"batch_size":100000}}'
    assert len(body) < 70
    refused(url, None, "'batch_size'", "batch_size=100000", f"at most {MAX_BATCH_SIZE}",
            "--max-batch-size", raw=body)
    status, answer = predict(url, {"signature_name": "initial_state",
                                   "inputs": {"batch_size": MAX_BATCH_SIZE}})
    assert status == 200 and all(len(v) == MAX_BATCH_SIZE for v in answer["outputs"].values())
    refused(url, {"signature_name": "serving_default",
                  "instances": [{"token_ids": [5] * W}] * (MAX_BATCH_SIZE + 1)},
            "`instances`", f"{MAX_BATCH_SIZE + 1} instances", "--max-batch-size")
    refused(url, {"signature_name": "tokenize", "inputs": {"text": ["a"] * (MAX_BATCH_SIZE + 1)}},
            "'text'", f"shape ({MAX_BATCH_SIZE + 1},)", "--max-batch-size")
    status, answer = predict(url, {"signature_name": "initial_state", "inputs": {"batch_size": 2}})
    assert status == 200 and all(len(v) == 2 for v in answer["outputs"].values())


def test_too_many_tokens_are_refused_naming_the_input_and_the_server_keeps_serving(server):
    _, url = server
    status, answer = predict(url, {"signature_name": "initial_state", "inputs": {"batch_size": 2}})
    state = answer["outputs"]
    length = MAX_TOKENS // 2 + W  # 2 rows: just over the limit, a body far under its own
    refused(url, {"signature_name": "step", "inputs": {"token_ids": [[5] * length] * 2, **state}},
            "'token_ids'", f"{2 * length} tokens", f"token_ids of shape (2, {length})",
            f"at most {MAX_TOKENS}", "--max-tokens-per-request")
    refused(url, {"signature_name": "serving_default", "inputs": {"token_ids": [[5] * (MAX_TOKENS + 1)]}},
            "'token_ids'", f"(1, {MAX_TOKENS + 1})", "--max-tokens-per-request")
    # One long text among short ones: the texts are padded to the longest, 2 x (3000 + 2).
    refused(url, {"signature_name": "tokenize", "inputs": {"text": ["é" * 1500, "a"]}},
            "'text'", "3000 UTF-8 bytes", f"{2 * 3002} tokens", "--max-tokens-per-request")
    status, answer = predict(url, {"signature_name": "step",
                                   "inputs": {"token_ids": [[5] * W] * 2, **state}})
    assert status == 200 and np.shape(answer["outputs"]["logits"]) == (2, W, V)


def test_an_answer_too_large_is_refused_before_the_model_runs_and_the_server_keeps_serving(server):
    _, url = server
    # 1 x 1000 x V logits: 259,000 floats, over 4 MB as JSON; 1000 tokens are within the limit.
    refused(url, {"signature_name": "serving_default", "inputs": {"token_ids": [[5] * 1000]}},
            "'serving_default'", f"logits of shape (1, 1000, {V})", "token_ids of shape (1, 1000)",
            f"at most {MAX_RESPONSE_BYTES} bytes", "--max-response-bytes")
    # score_text answers 4 numbers a token but computes V log-probabilities a token first.
    refused(url, {"signature_name": "score_text", "inputs": {"text": ["a" * 1000]}},
            "'score_text'", f"log-probabilities it computes of shape (1, 1002, {V})",
            "text of shape (1,), the longest 1000 UTF-8 bytes", "--max-response-bytes")
    data = json.dumps({"signature_name": "serving_default", "inputs": {"token_ids": [[5] * 500]}})
    request = urllib.request.Request(f"{url}:predict", data.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        status, answer = response.status, response.read()
    assert status == 200 and len(answer) <= MAX_RESPONSE_BYTES
    assert np.shape(json.loads(answer)["outputs"]["logits"]) == (1, 500, V)


def test_the_limits_default_to_the_documented_values_and_refuse_what_they_say(exported):
    import orjson  # KServe's JSON writer

    from keras_brt import serving

    _, path = exported
    runner = serving.SignatureRunner(path)
    assert (runner.max_batch_size, runner.max_tokens_per_request, runner.max_response_bytes) == (
        256, 65536, 64 * 2 ** 20)
    state = runner.predict({"signature_name": "initial_state", "inputs": {"batch_size": 2}})["outputs"]
    bodies = [  # What the server above, with its lower limits, refuses, and more
        {"signature_name": "initial_state", "inputs": {"batch_size": 100}},
        {"signature_name": "serving_default", "inputs": {"token_ids": [[5] * 1000]}},
        {"signature_name": "serving_default", "instances": [{"token_ids": [7] * 9}] * 3},
        {"signature_name": "step", "inputs": {"token_ids": [[5] * (MAX_TOKENS // 2 + W)] * 2, **state}},
        {"signature_name": "score_text", "inputs": {"text": ["a" * 1000, "ü"]}},
        {"signature_name": "tokenize", "inputs": {"text": ["é" * 1500, "a"]}},
    ]
    for body in bodies:
        name, arrays, rows = runner._inputs(body)
        estimate = runner._check_limits(name, arrays, rows)
        answer = orjson.dumps(runner.predict(body))
        assert len(answer) <= estimate, (body["signature_name"], len(answer), estimate)
    lowered = serving.SignatureRunner(path, max_batch_size=99, max_tokens_per_request=4000,
                                      max_response_bytes=10 ** 6)
    for body, field in zip(bodies, ["--max-batch-size", "--max-response-bytes", None,
                                    "--max-tokens-per-request", "--max-response-bytes",
                                    "--max-tokens-per-request"]):
        if field is None:
            assert lowered.predict(body)["predictions"]
            continue
        with pytest.raises(serving.RequestError, match=re.escape(field)) as refusal:
            lowered.predict(body)
        assert refusal.value.status == 400
    for name in ("max_body_bytes", "max_batch_size", "max_tokens_per_request", "max_response_bytes"):
        with pytest.raises(ValueError, match=f"{name}=0"):
            serving.serve(path, **{name: 0})


def test_the_rest_example_streams_a_text_through_the_server(server):
    _, url = server
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "serve_rest.py"), "--url", url,
         "--text", "Block-Recurrent Transformers carry a state from block to block. "],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    streamed, whole = (float(part.split(":")[-1]) for part in
                       run.stdout.strip().splitlines()[-1].split(";"))
    assert streamed == pytest.approx(whole, abs=1e-4)
