"""The README's code and the examples do what they say."""

import os
import re
import sys

import numpy as np
import pytest

from tests.conftest import tensorflow_pass_only

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@tensorflow_pass_only
def test_readme_python_blocks_run_in_order():
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert len(blocks) >= 2
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    # The README's claim: consecutive calls equal one call on the concatenation.
    import numpy as np

    lm, ids = namespace["lm"], namespace["ids"]
    whole, _ = lm.call_with_state(ids)
    first, state = lm.call_with_state(ids[:, :128])
    second, _ = lm.call_with_state(ids[:, 128:], state)
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, atol=1e-4)


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
