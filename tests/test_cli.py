"""`keras-brt train` / `evaluate`: run directories, errors, resuming after a kill."""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from keras_brt import cli
from keras_brt.data import SentencePieceTokenizer
from keras_brt.training import load_tokenizer
from tests.conftest import jax_pass_only, tensorflow_pass_only
from tests.models.test_preset_folders import DAMAGES, damaged_preset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--batch-size", "2", "--segment-length", "64", "--eval-documents", "2", "--log-every", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 small text files with structure worth learning."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    names = ["alpha", "beta", "gamma", "delta", "omega"]
    for i in range(40):
        title = rng.choice(names)
        lines = [f"# {title} {i}"] + [f"{title} = {title} + {j}  # step {j}" for j in range(rng.integers(8, 20))]
        (folder / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return str(folder)


@pytest.fixture(scope="module")
def trained_run(corpus, tmp_path_factory):
    """One short training run shared by the tests that read a run directory."""
    import io
    from contextlib import redirect_stdout

    out = str(tmp_path_factory.mktemp("runs") / "run")
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert cli.main(["train", "--data", corpus, "--steps", "6", "--checkpoint-every", "3",
                         "--output", out, *SMALL]) == 0
    return out, printed.getvalue()


@pytest.mark.slow
def test_train_writes_a_complete_run_and_evaluate_reports_json(trained_run, capsys):
    out, printed = trained_run
    for name in ("run.json", "tokenizer.json", "checkpoint.keras", "model.keras", "evaluation.json",
                 "loss_by_position.png", "history.csv", "preset/config.json",
                 "preset/model.weights.h5", "preset/tokenizer.json", "preset/metadata.json"):
        assert os.path.exists(os.path.join(out, name)), name
    assert os.listdir(os.path.join(out, "logs"))  # TensorBoard event files
    with open(os.path.join(out, "loss_by_position.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "step 6/6" in printed and "with the state carried" in printed
    assert cli.main(["evaluate", out, "--json", "--plot", os.path.join(out, "eval.png")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report) >= {"bits_per_token", "bits_per_token_state_cleared", "tokens", "vocabulary_size"}
    assert report["vocabulary_size"] == 264 and report["tokens"] > 0
    assert report["bits_per_byte"] == pytest.approx(report["bits_per_token"])  # bytes tokenizer
    with open(os.path.join(out, "evaluation.json")) as f:
        train_report = json.load(f)
    assert train_report["tokens"] == report["tokens"]
    assert train_report["bits_per_token"] == pytest.approx(report["bits_per_token"], abs=1e-4)
    assert os.path.exists(os.path.join(out, "eval.png"))


@pytest.mark.slow
@jax_pass_only  # data handling and the CLI do not depend on the Keras backend here
def test_evaluate_takes_the_runs_preset_folder_with_data(trained_run, corpus, capsys):
    out, _ = trained_run
    common = ["--data", corpus, "--eval-documents", "3", "--json"]
    capsys.readouterr()
    assert cli.main(["evaluate", out, *common, "--plot", os.path.join(out, "a.png")]) == 0
    expected = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    preset = os.path.join(out, "preset")
    assert cli.main(["evaluate", preset, *common, "--batch-size", "2", "--segment-length", "64",
                     "--plot", os.path.join(out, "b.png")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["tokens"] == expected["tokens"] > 0
    assert report["bits_per_token"] == pytest.approx(expected["bits_per_token"], abs=1e-5)
    assert report["bits_per_token_state_cleared"] == pytest.approx(
        expected["bits_per_token_state_cleared"], abs=1e-5)
    assert sorted(os.listdir(preset)) == ["config.json", "metadata.json", "model.weights.h5",
                                          "tokenizer.json"]  # nothing written into the folder
    assert cli.main(["evaluate", preset, "--eval-data", corpus, "--eval-documents", "3", "--json",
                     "--batch-size", "2", "--segment-length", "64",
                     "--plot", os.path.join(out, "c.png")]) == 0  # a folder to evaluate, alone
    alone = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert alone["bits_per_token"] == pytest.approx(expected["bits_per_token"], abs=1e-5)
    assert cli.main(["evaluate", preset]) == 2
    assert "give --data" in capsys.readouterr().err
    assert cli.main(["evaluate", preset, "--data", corpus, "--segment-length", "0"]) == 2
    assert "--segment-length=0" in capsys.readouterr().err


@pytest.mark.slow
@tensorflow_pass_only
def test_sentencepiece_runs_store_their_tokenizer(corpus, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", "--data", corpus, "--steps", "2", "--tokenizer", "sentencepiece",
                     "--vocabulary-size", "1000", "--output", out, "--no-evaluation", *SMALL]) == 0
    assert os.path.exists(os.path.join(out, "tokenizer.model"))
    capsys.readouterr()
    assert cli.main(["evaluate", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tokenizer = load_tokenizer(out)  # the stored SentencePiece model, reloaded
    assert isinstance(tokenizer, SentencePieceTokenizer) and tokenizer.vocabulary_size < 1000
    assert report["vocabulary_size"] % 8 == 0 and report["vocabulary_size"] != 264
    assert report["tokens"] > 0
    assert report["bits_per_byte"] == pytest.approx(report["bits_per_token"] * report["tokens"] / report["bytes"])
    # Exported with its SentencePiece model inside the graph (tensorflow-text ops).
    import tensorflow as tf

    assert cli.main(["export", out, str(tmp_path / "served")]) == 0
    served = tf.saved_model.load(str(tmp_path / "served" / "1")).signatures["tokenize"]
    text = "gamma = gamma + 3"
    result = served(text=tf.constant([text, ""]))
    expected = [tokenizer.bos_id] + np.asarray(tokenizer(text)).tolist()
    assert result["lengths"].numpy().tolist() == [len(expected), 1]
    assert result["token_ids"].numpy()[0].tolist() == expected


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--data", "/no/such/folder"], "--data='/no/such/folder'"),
        (["train", "--data", "no_such_tfds_dataset"], "tfds build no_such_tfds_dataset"),
        (["train", "--segment-length", "100"], "--segment-length=100"),
        (["train", "--batch-size", "0"], "--batch-size=0"),
        (["train", "--preset", "huge"], "--preset='huge'"),
        (["train", "--dtype-policy", "float8"], "--dtype-policy='float8'"),
        (["train", "--strategy", "multi_worker"], "multi-host recipe"),
        (["train", "--data", "mybooks"], "names no folder here"),
        (["train", "--held-out-fraction", "0"], "--held-out-fraction=0.0"),
        (["train", "--eval-data", "/no/such/shelf"], "--eval-data='/no/such/shelf'"),
        (["train", "--data", "/etc/hostname"], "--data='/etc/hostname'"),
    ],
)
def test_train_rejects_bad_arguments(argv, message, capsys, tmp_path):
    assert cli.main(argv + ["--output", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err


def test_empty_data_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    assert cli.main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "run")]) == 2
    assert "readable text" in capsys.readouterr().err


@pytest.mark.slow
@tensorflow_pass_only
def test_runs_are_never_overwritten_and_bad_run_directories_are_reported(corpus, trained_run, tmp_path,
                                                                         capsys):
    out = tmp_path / "run"
    shutil.copytree(trained_run[0], out)
    # Same output again without --resume: refused, nothing touched.
    before = (out / "model.keras").stat().st_mtime
    assert cli.main(["train", "--data", corpus, "--steps", "8", "--output", str(out), *SMALL]) == 2
    assert "--resume" in capsys.readouterr().err and (out / "model.keras").stat().st_mtime == before
    # --resume with other settings: refused.
    assert cli.main(["train", "--data", corpus, "--steps", "8", "--output", str(out), "--resume",
                     *SMALL[:2], "--segment-length", "128"]) == 2
    assert "segment_length" in capsys.readouterr().err
    # A damaged checkpoint is reported and left in place, never replaced by a fresh model.
    (out / "checkpoint.keras").write_bytes(b"not a zip file")
    assert cli.main(["train", "--data", corpus, "--steps", "8", "--output", str(out), "--resume", *SMALL]) == 2
    assert "checkpoint could not be loaded" in capsys.readouterr().err
    assert (out / "checkpoint.keras").read_bytes() == b"not a zip file"
    # A run directory from an incompatible version.
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**run, "format": 99, "keras_brt_version": "9.0"}))
    assert cli.main(["evaluate", str(out)]) == 2
    assert "incompatible keras_brt version" in capsys.readouterr().err
    assert cli.main(["evaluate", str(tmp_path)]) == 2
    assert "no run.json" in capsys.readouterr().err


def _train_command(corpus, out, steps=8, resume=False):
    return [sys.executable, "-m", "keras_brt", "train", "--data", corpus, "--steps", str(steps),
            "--checkpoint-every", "4", "--output", out, "--no-evaluation", *SMALL] + (
                ["--resume"] if resume else [])


@pytest.mark.slow
@tensorflow_pass_only
def test_a_killed_run_resumes_from_its_checkpoint_and_ends_identical(corpus, tmp_path):
    import keras

    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    # The same command twice, at once: one runs to the end, the other is killed once its
    # step-4 checkpoint is on disk.
    log = open(tmp_path / "straight.log", "w")
    uninterrupted = subprocess.Popen(_train_command(corpus, straight), env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
    process = subprocess.Popen(_train_command(corpus, killed), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = os.path.join(killed, "checkpoint.json")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(marker) and json.load(open(marker))["step"] >= 4:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(killed, "model.keras")), "the run finished before the kill"
    assert uninterrupted.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text()[-3000:]
    log.close()
    result = subprocess.run(_train_command(corpus, killed, resume=True), env=env, check=True,
                            capture_output=True, text=True)
    assert "Resuming tiny_rec_fixed_skip" in result.stdout
    assert "step 4 of 8" in result.stdout
    a = keras.saving.load_model(os.path.join(straight, "model.keras"))
    b = keras.saving.load_model(os.path.join(killed, "model.keras"))
    assert int(a.optimizer.iterations) == int(b.optimizer.iterations) == 8
    for u, v in zip(a.weights, b.weights):  # weights, optimizer-independent lanes included
        np.testing.assert_allclose(u.numpy(), v.numpy(), atol=1e-6, err_msg=u.path)
    for u, v in zip(a.optimizer.variables, b.optimizer.variables):
        np.testing.assert_allclose(u.numpy(), v.numpy(), atol=1e-6, err_msg=u.path)
    # The whole history survives the kill: one row per 2 steps (--log-every 2), as in the straight run.
    import csv

    straight_rows, killed_rows = (list(csv.reader(open(os.path.join(d, "history.csv"))))
                                  for d in (straight, killed))
    assert [r[0] for r in killed_rows] == [r[0] for r in straight_rows] == ["step", "2", "4", "6", "8"]
    column = straight_rows[0].index("loss")  # exact: every step weighs the same in Keras's mean
    np.testing.assert_allclose([float(r[column]) for r in killed_rows[1:]],
                               [float(r[column]) for r in straight_rows[1:]], rtol=1e-4)


@pytest.mark.slow
@tensorflow_pass_only
def test_export_writes_a_servable_model_of_the_run(trained_run, tmp_path, capsys):
    import tensorflow as tf

    from keras_brt.training import load_checkpoint

    run_dir, _ = trained_run
    base = str(tmp_path / "served")
    assert cli.main(["export", run_dir, base, "--scores", "log_probs"]) == 0
    printed = capsys.readouterr().out
    assert f"SavedModel written to {os.path.join(base, '1')}" in printed
    assert "score_text" in printed and "layer_" in printed
    signatures = tf.saved_model.load(os.path.join(base, "1")).signatures
    assert set(signatures) == {"serving_default", "initial_state", "step", "score_text", "tokenize"}

    lm = load_checkpoint(os.path.join(run_dir, "model.keras"))
    tokenizer = load_tokenizer(run_dir)
    text = "alpha = alpha + 1  # step 1\n"
    ids = np.concatenate([[tokenizer.bos_id], np.asarray(tokenizer(text))]).astype("int32")[None]
    logits, _ = lm.call_with_state(ids)
    expected = np.asarray(tf.nn.log_softmax(logits))
    served = signatures["serving_default"](token_ids=tf.constant(ids))["log_probs"].numpy()
    np.testing.assert_allclose(served, expected, atol=2e-4)
    scored = signatures["score_text"](text=tf.constant([text]))
    bits = -expected[0, np.arange(ids.shape[1] - 1), ids[0, 1:]].mean() / np.log(2)
    assert float(scored["bits_per_token"][0]) == pytest.approx(bits, abs=1e-4)
    # The run's preset folder exports the same model.
    assert cli.main(["export", os.path.join(run_dir, "preset"), base, "--version", "2",
                     "--scores", "log_probs"]) == 0
    capsys.readouterr()
    from_preset = tf.saved_model.load(os.path.join(base, "2")).signatures["serving_default"]
    np.testing.assert_allclose(from_preset(token_ids=tf.constant(ids))["log_probs"].numpy(),
                               served, atol=1e-5)

    assert cli.main(["export", run_dir, base]) == 2  # The version exists.
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["export", run_dir, base, "--overwrite", "--no-text-signature"]) == 0
    assert "score_text" not in set(tf.saved_model.load(os.path.join(base, "1")).signatures)


@pytest.mark.slow
@tensorflow_pass_only
def test_train_under_a_strategy_in_mixed_bfloat16(corpus, tmp_path, capsys):
    import keras

    from keras_brt.training import load_checkpoint

    out = str(tmp_path / "run")
    argv = ["train", "--data", corpus, "--steps", "2", "--output", out, "--no-evaluation",
            "--strategy", "mirrored", "--dtype-policy", "mixed_bfloat16", *SMALL]
    assert cli.main(argv) == 0
    assert "mixed_bfloat16, MirroredStrategy x1" in capsys.readouterr().out
    run = json.loads(open(os.path.join(out, "run.json")).read())
    assert (run["strategy"], run["dtype_policy"]) == ("mirrored", "mixed_bfloat16")
    lm = load_checkpoint(os.path.join(out, "model.keras"))
    assert lm.backbone.dtype_policy.name == "mixed_bfloat16" and int(lm.optimizer.iterations.numpy()) == 2
    hidden, _ = lm.backbone(np.ones((1, 8), "int32"))
    logits, _ = lm.call_with_state(np.ones((1, 8), "int32"))
    assert keras.backend.standardize_dtype(hidden.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    # Resuming in another precision would silently change the run: refused.
    assert cli.main([*argv[:-len(SMALL) - 2], "--resume", "--dtype-policy", "float32", *SMALL]) == 2
    assert "dtype_policy" in capsys.readouterr().err


@pytest.mark.slow
@jax_pass_only  # generation itself is tested on both backends in tests/models/test_generation.py
def test_generate_continues_a_prompt_reproducibly(trained_run, capsys):
    run_dir, _ = trained_run
    argv = ["generate", run_dir, "--prompt", "alpha = ", "--max-new-tokens", "20", "--seed", "3"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("alpha = ")
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == first  # seeded
    # The run's preset folder (model and tokenizer) continues the prompt identically.
    assert cli.main(["generate", os.path.join(run_dir, "preset"), *argv[2:]]) == 0
    assert capsys.readouterr().out == first
    assert cli.main(argv[:4] + ["--sampler", "greedy", "--strip-prompt", "--max-length", "16"]) == 0
    greedy = capsys.readouterr().out[:-1]  # print's newline
    assert 0 < len(greedy.encode()) <= 16 - 9  # BOS + 8 prompt bytes: at most 7 new bytes
    assert cli.main(["generate", run_dir, "--prompt", "alpha", "--max-length", "3"]) == 2
    assert "Received: max_length=3" in capsys.readouterr().err


def test_generate_checks_its_arguments_before_loading_the_model(tmp_path, capsys):
    """Each error is one line naming the flag the user typed and the value; the run directory
    here holds no model at all, so any of them reaching the model loading would fail otherwise."""
    empty = str(tmp_path / "no_run")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    cases = [
        (["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens=0"),
        (["--prompt-file", str(tmp_path / "missing.txt")], f"--prompt-file='{tmp_path / 'missing.txt'}'"),
        (["--prompt-file", str(latin)], f"--prompt-file='{latin}'"),
        ([], "--prompt TEXT or --prompt-file PATH"),
    ]
    for extra, message in cases:
        assert cli.main(["generate", empty, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    # With the encoding named, the prompt file is read and the missing run is what is reported.
    assert cli.main(["generate", empty, "--prompt-file", str(latin), "--encoding", "latin-1"]) == 2
    assert "no_run" in capsys.readouterr().err


# The byte presets have 264 ids, the ByteTokenizer 259; the text never holds padding, BOS or
# the ids 259 to 263, which it cannot decode (they crashed `generate`: "bytes must be in
# range(0, 256)").
UNSAMPLABLE = [0, 1, 259, 260, 261, 262, 263]


@pytest.fixture(scope="module")
def favouring_preset(tmp_path_factory):
    """A preset folder (model and ByteTokenizer), as a run writes, whose model's logits favour
    the ids the tokenizer cannot decode (and padding and BOS) by about 20, whatever the text."""
    from keras_brt.data import ByteTokenizer
    from tests.models.common import make_lm_favouring

    lm = make_lm_favouring(UNSAMPLABLE)
    lm.generator.tokenizer = ByteTokenizer()
    folder = str(tmp_path_factory.mktemp("favouring") / "preset")
    lm.save_to_preset(folder)
    return folder


@pytest.mark.parametrize("sampler", [[], ["--sampler", "greedy"]])  # the default is top_p
def test_generate_never_samples_ids_the_tokenizer_cannot_decode(favouring_preset, sampler, capsys,
                                                                monkeypatch):
    from keras_brt.data import ByteTokenizer
    from tests.models.common import record_decoding

    decoded = record_decoding(monkeypatch)
    argv = ["generate", favouring_preset, "--prompt", "def ", "--max-new-tokens", "16", "--seed", "0"]
    assert cli.main(argv + sampler) == 0, capsys.readouterr().err
    row = decoded[-1]  # BOS, the prompt's 4 bytes, then what was generated
    assert row[0] == 1 and len(row) == 1 + 4 + 16
    assert not np.isin(row[5:], UNSAMPLABLE).any(), row[5:]
    assert capsys.readouterr().out == "def " + ByteTokenizer().detokenize(row[5:]) + "\n"


@pytest.mark.slow  # three compilations of the generate step (Python, and two fresh CLI loads)
def test_generate_continues_an_empty_prompt_as_python_does(favouring_preset, tmp_path, capsys):
    """`--prompt ""` (or an empty --prompt-file) is `lm.generate("")`: a BOS alone, then text
    (padding and BOS, which the model favours here, are never generated). No prompt at all
    stays an error (test_generate_checks_its_arguments_before_loading_the_model)."""
    from keras_brt.models import BlockRecurrentTransformerCausalLM

    lm = BlockRecurrentTransformerCausalLM.from_preset(favouring_preset)
    expected = lm.generate("", max_length=9, sampler="greedy", stop_token_ids="auto")
    assert len(expected) > 0
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for prompt in (["--prompt", ""], ["--prompt-file", str(empty)]):
        argv = ["generate", favouring_preset, *prompt, "--max-new-tokens", "8", "--sampler", "greedy"]
        assert cli.main(argv) == 0, capsys.readouterr().err
        assert capsys.readouterr().out == expected + "\n"


def test_train_refuses_resume_without_a_run_and_an_output_that_is_a_file(tmp_path, capsys):
    missing = str(tmp_path / "no_such_run")
    assert cli.main(["train", "--output", missing, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and f"--output='{missing}'" in err
    assert not os.path.exists(missing)  # nothing was started
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a run")
    assert cli.main(["train", "--output", str(a_file)]) == 2
    assert f"--output='{a_file}'" in capsys.readouterr().err


@pytest.mark.slow
@jax_pass_only  # data handling and the CLI do not depend on the Keras backend here
def test_a_small_folder_in_another_encoding_trains_and_is_evaluated_on_its_own_bytes(tmp_path, capsys):
    """Three files (one Latin-1, one not text): the tails of the files are held out, the
    undecodable and skipped files are reported, and bits per byte count the files' bytes."""
    books = tmp_path / "books"
    books.mkdir()
    texts = ["Il était une fois une forêt. " * 40, "Ça, c'est déjà l'été. " * 50]
    for i, text in enumerate(texts):
        (books / f"book{i}.txt").write_bytes(text.encode("latin-1"))
    (books / "cover.txt").write_bytes(b"\x89PNG\x00\x00" * 50)
    out = str(tmp_path / "run")
    argv = ["train", "--data", str(books), "--steps", "2", "--output", out, *SMALL]
    with pytest.warns(UserWarning, match="cover.txt: not a text file"):
        assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "too few files" in printed
    assert "2 file(s) have bytes that are not valid utf-8" in printed
    assert "skipped as not text" in printed
    assert printed.index("book0.txt, book1.txt") < printed.index("Training tiny_rec_fixed_skip")
    report = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    tails = sum(len(t.encode("latin-1")) - int(len(t.encode("latin-1")) * 0.95) for t in texts)
    assert report["bytes"] == tails  # the held-out bytes of the files, not of a re-encoding

    # The right encoding: nothing to report, fewer bytes than UTF-8 would count.
    out2 = str(tmp_path / "run2")
    with pytest.warns(UserWarning):
        assert cli.main([*argv[:-len(SMALL) - 2], "--output", out2, "--encoding", "latin-1", *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "not valid" not in printed
    assert json.loads((tmp_path / "run2" / "evaluation.json").read_text())["bytes"] == tails

    # A separate evaluation folder, evaluated whole; and no held-out data at all is needed
    # without evaluation.
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    (shelf / "other.txt").write_text("Une autre histoire. " * 30)
    assert cli.main(["train", "--data", str(books), "--eval-data", str(shelf), "--steps", "2",
                     "--output", str(tmp_path / "run3"), "--encoding", "latin-1", *SMALL]) == 0
    assert "held-out data: all 1 files" in capsys.readouterr().out
    assert json.loads((tmp_path / "run3" / "evaluation.json").read_text())["bytes"] == 600
    # `evaluate --data FOLDER`: every file of the folder is held-out data, however few.
    (shelf / "more.txt").write_text("Encore une. " * 10)
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "run3"), "--data", str(shelf), "--json"]) == 0
    printed = capsys.readouterr().out
    assert "held-out data: all 2 files" in printed
    assert json.loads(printed.strip().splitlines()[-1])["bytes"] == 600 + 120


def _as_the_command(*argv):
    """Runs `keras-brt ARGV` as its console script does (argv[0] is `keras-brt`), on the
    TensorFlow backend, in a fresh process; prints which modules were imported."""
    code = (
        "import sys; sys.argv = ['keras-brt', *sys.argv[1:]]\n"
        "from keras_brt.cli import main\n"
        "try:\n    code = main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('imported:', 'keras' in sys.modules, 'tensorflow' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env=env, timeout=300)


@jax_pass_only  # one subprocess pass is enough; it sets its own backend
def test_help_imports_no_keras_and_native_log_lines_are_hidden_unless_verbose():
    done = _as_the_command("--help")
    assert done.returncode == 0 and "train" in done.stdout
    assert "imported: False False" in done.stdout  # neither Keras nor TensorFlow

    quiet = _as_the_command("evaluate", "/no/such/run")
    assert quiet.returncode == 2 and "imported: True True" in quiet.stdout
    assert quiet.stderr.splitlines() == [
        "keras-brt evaluate: error: Not a keras-brt run directory (no run.json). "
        "Received: run_dir='/no/such/run'"
    ]
    loud = _as_the_command("evaluate", "/no/such/run", "--verbose")
    assert loud.returncode == 2 and "Not a keras-brt run directory" in loud.stderr
    # What TensorFlow wrote to file descriptor 2 on this machine (nothing on some machines)
    # is shown, and is exactly what the quiet run left out.
    assert [line for line in loud.stderr.splitlines() if not cli.NATIVE_LOG_LINE.match(line)] \
        == quiet.stderr.splitlines()


def test_the_filter_drops_native_info_and_warning_lines_and_passes_everything_else():
    code = (
        "import os, sys\n"
        "sys.argv[0] = 'keras-brt'  # imports no Keras\n"
        "from keras_brt.cli import NativeLogFilter\n"
        "with NativeLogFilter():\n"
        "    os.write(2, b'I0000 00:00:1796602488.355642    3150 port.cc:153] hidden\\n')\n"
        "    os.write(2, b'kept, ')\n"
        "    os.write(2, b'in two writes\\n')\n"
        "    os.write(2, b'W0000 00:00:1796602488.403789    3150 cpu_feature_guard.cc:227] hidden\\n')\n"
        "    os.write(2, b'E0000 00:00:1796602949.716460    4685 cuda_platform.cc:52] hidden\\n')\n"
        "    os.write(2, b'F0000 00:00:1796602949.716460    4685 check.cc:1] shown\\n')\n"
        "    print('a Python warning', file=sys.stderr)\n"
        "print('after', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        "kept, in two writes",
        "F0000 00:00:1796602949.716460    4685 check.cc:1] shown",
        "a Python warning",
        "after",
    ]


def test_serve_refuses_a_folder_that_is_not_a_saved_model(tmp_path, capsys):
    assert cli.main(["serve", str(tmp_path)]) == 2
    assert "must be a SavedModel folder" in capsys.readouterr().err


def test_serve_passes_the_operators_limits_to_the_server(tmp_path, monkeypatch):
    (tmp_path / "saved_model.pb").write_bytes(b"")
    calls = []
    fake = types.ModuleType("keras_brt.serving")
    fake.serve = lambda *args, **kwargs: calls.append((args, kwargs))
    monkeypatch.setitem(sys.modules, "keras_brt.serving", fake)
    assert cli.main(["serve", str(tmp_path), "--port", "9000", "--max-body-bytes", "100",
                     "--max-batch-size", "8", "--max-tokens-per-request", "512",
                     "--max-response-bytes", "4096", "--verbose"]) == 0
    assert cli.main(["serve", str(tmp_path), "--verbose"]) == 0
    assert calls == [
        ((str(tmp_path), "brt", 9000), dict(max_body_bytes=100, max_batch_size=8,
                                            max_tokens_per_request=512, max_response_bytes=4096)),
        ((str(tmp_path), "brt", 8501), dict(max_body_bytes=None, max_batch_size=None,
                                            max_tokens_per_request=None, max_response_bytes=None)),
    ]


def test_serve_refuses_a_limit_below_1_and_its_help_gives_the_defaults(tmp_path, capsys):
    from keras_brt import serving

    (tmp_path / "saved_model.pb").write_bytes(b"")  # refused before the model is read
    assert cli.main(["serve", str(tmp_path), "--max-batch-size", "0"]) == 2
    assert "`max_batch_size` (--max-batch-size) must be an integer >= 1. Received: max_batch_size=0" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for flag, default in [("--max-batch-size", f"default {serving.DEFAULT_MAX_BATCH_SIZE})"),
                          ("--max-tokens-per-request",
                           f"default {serving.DEFAULT_MAX_TOKENS_PER_REQUEST})"),
                          ("--max-response-bytes",
                           f"default {serving.DEFAULT_MAX_RESPONSE_BYTES // 2 ** 20} MiB)")]:
        assert flag in shown and default in shown.split(flag)[-1].split("--")[0], (flag, shown)


def _mixed_folder(root):
    """A folder of code in another language, as the issue's: 30 *.py files, 3 *.txt tables (one
    in Latin-1), a README, and a .git folder that is not counted."""
    folder = root / "project"
    (folder / "pkg").mkdir(parents=True)
    (folder / ".git").mkdir()
    for i in range(30):
        (folder / "pkg" / f"module{i:02d}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 40)
    for i in range(2):
        (folder / f"table{i}.txt").write_text(f"{i} alpha beta gamma\n" * 60)
    (folder / "latin.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 60)
    (folder / "README.md").write_text("# a project\n")
    for i in range(5):
        (folder / ".git" / f"object{i}").write_text("x")
    return folder


def test_the_data_lines_say_which_files_match_and_which_extensions_dominate(tmp_path, capsys):
    from keras_brt.training import report_data, resolve_data

    folder = _mixed_folder(tmp_path)
    report_data(*resolve_data(str(folder)))
    printed = capsys.readouterr().out
    assert f"data: 3 files of 34 in {folder} match --pattern '*.txt' (" in printed
    assert f"most files in {folder} do not match '*.txt': 30 *.py; to train on those, pass " \
           f"--pattern '*.py'" in printed
    assert "held-out data: the last 5% of each of the 3 files" in printed
    assert ("training data: 1 file(s) have bytes that are not valid utf-8 (read as U+FFFD; give the "
            "right --encoding, e.g. --encoding latin-1): latin.txt") in printed
    report_data(*resolve_data(str(folder), pattern="*.py"))
    printed = capsys.readouterr().out
    assert f"data: 30 files of 34 in {folder} match --pattern '*.py'" in printed
    assert "do not match" not in printed and "not valid" not in printed
    assert "held-out data: " in printed and "whole files" in printed


def test_held_out_data_too_small_to_mean_anything_is_warned_about(tmp_path):
    from keras_brt.data import ByteTokenizer
    from keras_brt.training import check_held_out_size, resolve_data

    (tmp_path / "only.txt").write_text("x = 1\n" * 200)  # 60 held-out bytes: a one-file folder
    _, test = resolve_data(str(tmp_path))
    with pytest.warns(UserWarning, match=r"The held-out data is only 60 tokens \(1 document\(s\)\), "
                                         r"fewer than the 4096 needed .* one 512-token segment for "
                                         r"each of the 8 lanes"):
        assert check_held_out_size(test, ByteTokenizer(), 8, 512) == 60
    (tmp_path / "more.txt").write_text("y = 2\n" * 20000)
    _, test = resolve_data(str(tmp_path))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_held_out_size(test, ByteTokenizer(), 8, 512) >= 4096  # enough: no warning
    with pytest.warns(UserWarning, match=r"\(1 document\(s\), the first 1: --eval-documents 1, 0 "
                                         r"evaluates every one\), fewer than the 16384 needed"):
        check_held_out_size(test, ByteTokenizer(), 8, 2048, documents=1)


def test_the_terminal_progress_times_steps_from_the_second_one(monkeypatch):
    """Keras's bar timed its first step with the compilation in it: 46 s of XLA made a first
    ETA of 3 h 50 min for 300 steps. Here no ETA is shown before the second step, and then
    it comes from the steps after the first."""
    import io

    from keras_brt.training.progress import TerminalProgress

    clock = iter([46.0, 46.5, 47.0, 200.0])
    monkeypatch.setattr("keras_brt.training.progress.time.monotonic", lambda: next(clock))
    stream = io.StringIO()
    progress = TerminalProgress(300, stream=stream, interval=0)
    for batch in range(3):
        progress.on_train_batch_end(batch, {"loss": 2.0})
    lines = stream.getvalue().split("\r")[1:]
    assert lines[0].startswith("step 1/300 - loss: 2.0000 - ETA after the next step")
    assert lines[1].rstrip().endswith("0.50 s/step - ETA 2:29")  # 0.5 s x 298 steps
    assert lines[2].rstrip().endswith("0.50 s/step - ETA 2:28")  # 0.5 s x 297 steps: 148.5 s


def test_help_shows_every_default_the_presets_and_what_a_run_directory_holds(capsys):
    from keras_brt.models import PRESETS

    with pytest.raises(SystemExit) as done:
        cli.main(["train", "--help"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    flat = " ".join(printed.split())
    for default in ("(default: stdlib)", "(default: *.txt)", "(default: tiny_rec_fixed_skip)",
                    "(default: 300)", f"(default: {os.path.join('runs', 'latest')})",
                    "(default: 0.05)", "(default: 8)", "(default: 512)", "(default: adamw)"):
        assert default in flat, default
    for name in PRESETS:
        assert re.search(rf"^  {name} +\S", printed, flags=re.M), name
    for name in ("run.json", "tokenizer.json", "checkpoint.keras", "model.keras", "preset/",
                 "history.csv", "logs/", "evaluation.json", "loss_by_position.png"):
        assert name in printed, name
    assert cli.preset_table() == {k: v["metadata"]["description"] for k, v in PRESETS.items()}
    # Every option of every command says its default (flags are off; an option whose default is
    # None says what happens instead).
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for command, sub in commands.choices.items():
        for action in sub._actions:
            if action.option_strings and action.nargs != 0:
                text = sub.formatter_class(sub.prog)._get_help_string(action) or ""
                assert re.search(r"\bdefault\b", text), (command, action.option_strings, text)
    # And --help still imports neither Keras nor TensorFlow.
    done = _as_the_command("train", "--help")
    assert done.returncode == 0 and "imported: False False" in done.stdout
    assert "tiny_rec_lstm_skip" in done.stdout


@pytest.mark.parametrize("file,damage,message", DAMAGES[::2], ids=[d[0] for d in DAMAGES[::2]])
def test_generate_and_evaluate_name_the_damaged_file_of_a_preset_folder(tmp_path, capsys, file,
                                                                       damage, message):
    folder = damaged_preset(tmp_path / "preset", file, damage)
    for argv in (["generate", folder, "--prompt", "def "],
                 ["evaluate", folder, "--data", str(tmp_path)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"keras-brt {argv[0]}: error: The preset folder's {file} ")
        assert message in err and repr(os.path.join(folder, file)) in err and err.count("\n") == 1
    os.remove(os.path.join(folder, "config.json"))  # no config at all: not taken for a run
    assert cli.main(["generate", folder, "--prompt", "def "]) == 2
    assert "but no config.json" in capsys.readouterr().err


@jax_pass_only  # one subprocess pass is enough; it sets its own backend
def test_the_jax_backend_without_jax_says_how_to_install_it():
    code = (
        "import sys; sys.modules['jax'] = None  # as after `pip install -e .`\n"
        "sys.argv[0] = 'keras-brt'\n"
        "from keras_brt.cli import main\n"
        "sys.exit(main(['evaluate', '/no/such/run']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": ROOT})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1].startswith("keras-brt evaluate: error: Keras's JAX backend")
    assert 'pip install -e ".[jax]"' in done.stderr and "KERAS_BACKEND='jax'" in done.stderr


@pytest.mark.slow
def test_train_says_what_it_reads_compiles_and_saves_and_what_to_try_next(tmp_path, capsys,
                                                                          monkeypatch):
    """The first run as a new user sees it, in a terminal: which files, the files it cannot
    decode and the held-out warning before training, a line before the compiled first step,
    time per step without that step, a line around saving, and the commands to try next."""
    folder = _mixed_folder(tmp_path)
    out = str(tmp_path / "run")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    with pytest.warns(UserWarning, match="The held-out data is only"):
        assert cli.main(["train", "--data", str(folder), "--steps", "4", "--output", out,
                         *SMALL]) == 0
    printed = capsys.readouterr().out
    order = [f"data: 3 files of 34 in {folder} match --pattern '*.txt'", "pass --pattern '*.py'",
             "held-out data: the last 5%", "not valid utf-8", "latin.txt",
             "Training tiny_rec_fixed_skip", "step 0: compiling the training step",
             "step 1 done in", "\rstep 1/4", "ETA after the next step", "\rstep 4/4",
             f"saving the model in {out}", f"saved in ", "held-out bits per token",
             f"run saved in {out}", "next:",
             f"keras-brt generate {out} --prompt 'The ' --max-new-tokens 200",
             f"keras-brt evaluate {out}", f"keras-brt export {out} {os.path.join(out, 'export')}"]
    places = [printed.find(text) for text in order]
    assert -1 not in places and places == sorted(places), list(zip(order, places))
    first_step = float(re.search(r"step 1 done in (\d+) s", printed).group(1))
    per_step = float(re.search(r"step 4/4 .* (\d+\.\d+) s/step", printed).group(1))
    assert per_step < max(first_step, 2) / 2  # the compiled first step is left out of the rate
    # The file with undecodable bytes is named before training (its training part and its
    # held-out tail), and not again at the end.
    assert "held-out data: 1 file(s) have bytes that are not valid utf-8" in printed
    assert "latin.txt" not in printed[printed.index("Training tiny_rec_fixed_skip"):]
    # `keras-brt evaluate` on a folder too small to mean anything warns too.
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "one.txt").write_text("alpha beta\n" * 10)
    with pytest.warns(UserWarning, match=r"The held-out data is only 110 tokens"):
        assert cli.main(["evaluate", out, "--data", str(tmp_path / "small")]) == 0
