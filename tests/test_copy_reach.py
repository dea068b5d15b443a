"""bench/copy_reach.py, whose corpus statistics the README quotes: the vectorised search for
each byte's nearest earlier copy against a direct search, and the filter that keeps only
strings found in no other document."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import copy_reach  # noqa: E402


def direct_search(data, k):
    distances = []
    for i in range(k, len(data)):
        gram = data[i - k:i + 1]
        distances.append(next((i - j for j in range(i - 1, k - 1, -1)
                               if np.array_equal(data[j - k:j + 1], gram)), 0))
    return distances


def test_nearest_copy_distance_equals_a_direct_search():
    rng = np.random.default_rng(0)
    for _ in range(100):
        data = rng.integers(0, 3, size=int(rng.integers(1, 50))).astype(np.uint8)
        k = int(rng.integers(0, 4))
        assert list(copy_reach.nearest_copy_distance(data, k)) == direct_search(data, k), (data, k)


def test_histogram_counts_by_range_and_drops_strings_shared_with_other_documents():
    filler = "".join(chr(65 + i % 26) + chr(97 + i // 26 % 26) for i in range(400))  # no repeats of 3
    own, shared = "q#Z", "xyz"
    first = own + filler + own + shared + shared  # own: 803 bytes back; shared: 3 bytes back
    second = shared + "0123456789"
    counts = copy_reach.histogram([first, second], k=2)
    ranges = [low for low, _ in copy_reach.RANGES]
    assert counts[ranges.index(512)] == 1  # the last byte of the second `own`
    assert counts[ranges.index(1)] == 1  # the last byte of the second `shared`
    assert counts.sum() == len(first) + len(second) - 2 * 2
    only_own = copy_reach.histogram([first, second], k=2, own_only=True)
    assert only_own[ranges.index(512)] == 1 and only_own[ranges.index(1)] == 0
