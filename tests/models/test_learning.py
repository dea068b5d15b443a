"""The recurrence learns what a sliding window cannot: recall across many blocks."""

import pytest

from tests.models.common import PAYLOADS, train_and_score


@pytest.mark.slow
def test_recurrent_model_recalls_beyond_the_window_and_slide_cannot():
    rec = train_and_score((-1,))
    slide = train_and_score(())
    print(f"\nrecall accuracy (chance {1 / len(PAYLOADS):.3f}): Rec:fixed:skip {rec:.3f}, Slide {slide:.3f}")
    assert rec > 0.9
    assert slide < 0.3
