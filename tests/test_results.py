"""The results schema: one chance level and one column order, against independent references."""

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier

from nmtune.results import LEADING_COLUMNS, chance_level, tidy_table


@pytest.mark.parametrize("labels", [
    np.repeat([0, 1, 2], [50, 30, 20]),          # imbalanced ints
    np.array(["cat", "dog", "dog", "eel"] * 5),  # string labels
    np.tile(np.arange(10), 7),                   # balanced: equals 1/K
])
def test_chance_is_the_best_constant_prediction(labels):
    # The reference: scikit-learn's majority-class predictor scored on the same labels.
    X = np.zeros((labels.size, 1))
    dummy = DummyClassifier(strategy="most_frequent").fit(X, labels)
    assert chance_level(labels) == pytest.approx(dummy.score(X, labels))
    assert chance_level(labels) >= 1 / np.unique(labels).size


def test_chance_exceeds_one_over_k_on_an_imbalanced_set():
    assert chance_level([0] * 9 + [1]) == pytest.approx(0.9)  # not 1/K = 0.5


def test_tidy_table_puts_the_schema_columns_first_then_the_rest_sorted():
    rows = [{"views": 1, "accuracy": 0.5, "method": "lp", "seed": 0, "n_test": 10},
            {"accuracy": 0.7, "method": "mlp", "seed": 1, "loss_cov": 0.2, "noise_type": "none"}]
    df = tidy_table(rows)
    lead = [c for c in LEADING_COLUMNS if c in {"accuracy", "method", "seed", "noise_type"}]
    assert lead == ["noise_type", "seed", "method", "accuracy"]
    assert list(df.columns) == [*lead, "loss_cov", "n_test", "views"]
    expected = pd.DataFrame(rows)[list(df.columns)]
    pd.testing.assert_frame_equal(df, expected)
