"""Leaf names: flattening to ``/``-joined names and back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bv.core.tree import flatten_with_names, unflatten


def test_unflatten_inverts_flatten_with_names() -> None:
    nested: dict[str, Any] = {"a": {"b": np.zeros(2), "c": {"d": np.ones(1)}}, "e": np.arange(3)}
    flat = dict(flatten_with_names(nested))
    assert sorted(flat) == ["a/b", "a/c/d", "e"]
    back = unflatten(flat)
    assert dict(flatten_with_names(back)).keys() == flat.keys()
    np.testing.assert_array_equal(back["a"]["c"]["d"], nested["a"]["c"]["d"])


@pytest.mark.parametrize("flat", [{"a": 1, "a/b": 2}, {"a/b": 2, "a": 1}])
def test_a_name_that_is_both_leaf_and_group_is_an_error(flat: dict) -> None:
    with pytest.raises(ValueError, match="both an array and a prefix"):
        unflatten(flat)
