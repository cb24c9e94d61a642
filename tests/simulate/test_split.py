from collections import Counter

import pytest

from seedfed.client.simulate.sample_data import make_examples
from seedfed.client.simulate.split import dirichlet_split, iid_split


def test_iid_split_is_a_partition():
    parts = iid_split(103, 4, seed=1)
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(103))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_dirichlet_split_is_a_partition_and_deterministic():
    labels = [y for _, y in make_examples(400, seed=3)]
    a = dirichlet_split(labels, 8, alpha=0.5, seed=7)
    b = dirichlet_split(labels, 8, alpha=0.5, seed=7)
    assert a == b
    assert sorted(i for p in a for i in p) == list(range(400))
    assert min(map(len, a)) >= 1


def test_small_alpha_skews_labels_more_than_large_alpha():
    labels = [i % 2 for i in range(2000)]

    def mean_skew(alpha: float) -> float:
        parts = dirichlet_split(labels, 10, alpha=alpha, seed=11)
        skews = []
        for p in parts:
            c = Counter(labels[i] for i in p)
            skews.append(abs(c[0] - c[1]) / max(len(p), 1))
        return sum(skews) / len(skews)

    assert mean_skew(0.1) > mean_skew(100.0) + 0.3


def test_bad_split_arguments_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_split([0, 1], 1, alpha=0)
    with pytest.raises(ValueError, match="cannot give"):
        dirichlet_split([0, 1], 3, alpha=1.0)


def test_sample_data_is_labelled_and_reproducible():
    rows = make_examples(50, seed=2)
    assert rows == make_examples(50, seed=2)
    assert {y for _, y in rows} == {0, 1}
    assert all(t.strip() for t, _ in rows)
