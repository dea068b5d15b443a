"""The README's and the docs' code, their links, and the examples do what they say."""

import os
import re
import sys

import numpy as np
import pytest

from tests.conftest import tensorflow_pass_only

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The README's code, run in order as a new user runs it after `pip install -e .`: a fresh
# process with no KERAS_BACKEND and no ~/.keras (Keras's default backend, TensorFlow), and
# without JAX, which only the test extra installs.
README_AS_INSTALLED = """
import re, sys
sys.modules["jax"] = None  # `import jax` fails, as where it is not installed
with open(sys.argv[1]) as f:
    blocks = re.findall(r"```python\\n(.*?)```", f.read(), flags=re.S)
assert len(blocks) >= 2
namespace = {}
for block in blocks:
    exec(compile(block, "README.md", "exec"), namespace)
import keras
import numpy as np

assert keras.backend.backend() == "tensorflow"
# The README's claim: consecutive calls equal one call on the concatenation.
lm, ids = namespace["lm"], namespace["ids"]
whole, _ = lm.call_with_state(ids)
first, state = lm.call_with_state(ids[:, :128])
second, _ = lm.call_with_state(ids[:, 128:], state)
np.testing.assert_allclose(np.concatenate([first, second], 1), whole, atol=1e-4)
print("README blocks:", len(blocks))
"""


@tensorflow_pass_only
def test_readme_python_blocks_run_in_order_with_what_pip_install_installs(tmp_path):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(HOME=str(tmp_path), PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, "-c", README_AS_INSTALLED, os.path.join(ROOT, "README.md")],
        capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "README blocks:" in done.stdout


def test_the_readme_says_how_to_install_the_jax_backend():
    """`pip install -e .` installs TensorFlow, not JAX: the README's set-up says so and names
    the extra that adds it, which setup.py has."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    set_up = readme[readme.index("## Set up"):readme.index("## A quick tour")]
    assert 'pip install -e ".[jax]"' in set_up and "KERAS_BACKEND=jax" in set_up
    with open(os.path.join(ROOT, "setup.py")) as f:
        assert re.search(r'"jax": \["jax\[cpu\]', f.read())


def test_the_readme_set_up_gives_the_two_commands_and_ci_finds_the_test_command():
    """The set-up's two commands: the first trains the tiny model right after installing; the
    second, found as `.ci/run` finds it (the line after the marker's fence), runs the suite on
    both backends."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    set_up = readme[readme.index("## Set up"):readme.index("## A quick tour")]
    commands = re.findall(r"```bash\n(.*?)\n```", set_up, flags=re.S)
    assert len(commands) == 2, commands
    assert commands[0].endswith("pip install -e . && keras-brt train"), commands[0]
    lines = readme.splitlines()
    marker = lines.index("<!-- test-command -->")
    assert lines[marker + 1] == "```bash" and lines[marker + 2] == commands[1]
    for backend in ("tensorflow", "jax"):
        assert f"KERAS_BACKEND={backend} python -m pytest" in commands[1]
    assert 'pip install -e ".[test]"' in commands[1]


# The docs' code: each file's ```python blocks run in order in one namespace of their own (so
# every file imports what it uses), in a fresh process on the pass's backend. Any other fence
# (```bash, ```text, a bare ```) is not run, as in the README.
DOCS_AS_WRITTEN = """
import os, re, sys
ran = 0
for path in sys.argv[1:]:
    with open(path) as f:
        blocks = re.findall(r"```python\\n(.*?)```", f.read(), flags=re.S)
    namespace = {}
    for block in blocks:
        exec(compile(block, os.path.basename(path), "exec"), namespace)
        ran += 1
print("docs blocks:", ran)
"""


def _docs():
    folder = os.path.join(ROOT, "docs")
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".md"))


def test_the_docs_python_blocks_run_in_order(tmp_path):
    import subprocess

    with_code = []
    for path in _docs():
        with open(path) as f:
            if "```python\n" in f.read():
                with_code.append(path)
    assert with_code  # paper-fidelity.md and distribution.md have examples
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", DOCS_AS_WRITTEN, *with_code], capture_output=True,
                          text=True, timeout=600, cwd=str(tmp_path), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "docs blocks:" in done.stdout


def _slug(heading):
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_relative_link_of_the_readme_and_the_docs_resolves():
    """Links and images between the README, docs/ and bench/results/ point at files that exist,
    and a `#anchor` into a Markdown file at one of its headings."""
    broken = []
    for path in [os.path.join(ROOT, "README.md"), *_docs()]:
        with open(path) as f:
            text = re.sub(r"```.*?```", "", f.read(), flags=re.S)  # code blocks hold no links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(resolved):
                broken.append(f"{os.path.relpath(path, ROOT)}: {target}")
            elif anchor and resolved.endswith(".md"):
                with open(resolved) as f:
                    body = re.sub(r"```.*?```", "", f.read(), flags=re.S)
                headings = {_slug(h) for h in re.findall(r"^#+ (.*)$", body, flags=re.M)}
                if anchor not in headings:
                    broken.append(f"{os.path.relpath(path, ROOT)}: {target} (no such heading)")
    assert not broken, broken


@pytest.mark.slow
@tensorflow_pass_only
def test_rnn_composition_example_classifies_from_the_state():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import rnn_composition
    finally:
        sys.path.pop(0)
    accuracy, losses = rnn_composition.main(steps=150)
    assert accuracy > 0.9, accuracy  # chance is 1/8: the answer is only in the state
    assert losses[-1] < 0.5 * np.log(8)  # well below the loss of guessing


@pytest.mark.slow
@tensorflow_pass_only
def test_train_distributed_example_trains_and_the_chief_saves(tmp_path):
    import json
    import subprocess

    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(12):
        (folder / f"d{i}.txt").write_text(f"document {i}\n" + "abc abd abe " * (20 + i))
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "train_distributed.py"), "--strategy",
         "mirrored", "--data", str(folder), "--steps", "12", "--global-batch-size", "4",
         "--segment-length", "64", "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": ROOT},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ")[1])
    assert result["strategy"] == "MirroredStrategy" and result["chief"]
    assert result["loss"] < 0.6 * np.log(264)  # well below uniform over the byte vocabulary

    from keras_brt.training import load_checkpoint

    lm = load_checkpoint(str(tmp_path / "out" / "model.keras"))
    assert int(lm.optimizer.iterations.numpy()) == 12
    assert next(iter(lm.lane_state().values())).shape[0] == 4  # every lane of the global batch


def test_every_private_keras_use_is_listed_in_the_docs():
    """The "Private Keras APIs" list (docs/development.md, linked from the README) names every
    `keras.src` import and every private Keras member the package uses, so that a Keras
    upgrade knows where to look."""
    with open(os.path.join(ROOT, "docs", "development.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Private Keras APIs"):]
    end = section.find("\n## ", 1)
    section = section if end < 0 else section[:end]
    package = os.path.join(ROOT, "keras_brt")
    used = set()
    for folder, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    source = f.read()
                used |= set(re.findall(r"keras\.src[\w.]*(?: import \w+)?", source))
                # Private members of Keras objects (self._tracker, model._loss_tracker, ...).
                used |= set(re.findall(
                    r"\._(?:tracker|loss_tracker|maybe_symbolic_build|get_variable_index|"
                    r"dropout_mask|value_specs|in_multi_worker_mode|purge_model_variables)\b", source))
    names = {u.split(" import ")[-1] if " import " in u else u.split(".")[-1] for u in used}
    missing = sorted(n for n in names if n.lstrip(".") not in section)
    assert not missing, f"private Keras uses missing from docs/development.md's list: {missing}"
