"""Tests for bv.core.durations."""

from __future__ import annotations

import ml_collections
import pytest

from bv.core import durations
from bv.core.durations import DurationError


def conf(**kw) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(kw)


def test_steps_form_is_returned_as_is():
    assert durations.steps("warmup", conf(warmup_steps=250)) == 250
    assert durations.steps("warmup", conf(warmup_steps=0)) == 0
    assert durations.steps("warmup", conf(warmup_steps=1e3)) == 1000


def test_examples_divide_by_batch_size_and_round():
    assert durations.steps("log", conf(log_examples=10_000), batch_size=512) == 20  # 19.53 -> 20
    assert durations.steps("log", conf(log_examples=9_800), batch_size=1000) == 10  # 9.8 -> 10
    assert durations.steps("log", conf(log_examples=9_400), batch_size=1000) == 9  # 9.4 -> 9
    assert durations.steps("log", conf(log_examples=10), batch_size=512) == 1  # never rounds to 0


def test_epochs_use_data_size_and_batch_size():
    assert durations.steps("total", conf(total_epochs=90), data_size=1_281_167, batch_size=4096) == round(
        90 * 1_281_167 / 4096
    )
    assert durations.steps("total", conf(total_epochs=0.5), data_size=5000, batch_size=128) == 20  # 19.53
    assert durations.steps("total", conf(total_epochs=0.001), data_size=100, batch_size=10) == 1


def test_percent_is_a_fraction_of_total_steps():
    assert durations.steps("warmup", conf(warmup_percent=0.1), total_steps=1000) == 100
    assert durations.steps("warmup", conf(warmup_percent=0.333), total_steps=10) == 3  # 3.33 -> 3
    assert durations.steps("warmup", conf(warmup_percent=0.37), total_steps=10) == 4  # 3.7 -> 4
    assert durations.steps("warmup", conf(warmup_percent=0.0001), total_steps=10) == 1  # not 0
    assert durations.steps("warmup", conf(warmup_percent=0.0), total_steps=10) == 0
    assert durations.steps("warmup", conf(warmup_percent=1.0), total_steps=10) == 10
    with pytest.raises(DurationError, match=r"fraction of training in \[0, 1\]"):
        durations.steps("warmup", conf(warmup_percent=10), total_steps=10)


def test_more_than_one_form_is_an_error_naming_them():
    with pytest.raises(DurationError) as e:
        durations.steps("total", conf(total_steps=10, total_epochs=2), data_size=10, batch_size=1)
    assert "total_steps=10" in str(e.value) and "total_epochs=2" in str(e.value)


def test_none_counts_as_not_given():
    config = conf(total_steps=None, total_epochs=3)
    assert durations.steps("total", config, data_size=100, batch_size=10) == 30


def test_missing_uses_default_or_raises():
    assert durations.steps("ckpt", conf(), default=None) is None
    assert durations.steps("ckpt", conf(), default=500) == 500
    assert durations.steps("ckpt", {"ckpt_steps": 7}) == 7  # plain dicts work too
    with pytest.raises(DurationError, match="ckpt_steps, ckpt_epochs, ckpt_examples, ckpt_percent"):
        durations.steps("ckpt", conf())


def test_missing_sizes_are_clear_errors():
    with pytest.raises(DurationError, match="data_size"):
        durations.steps("total", conf(total_epochs=1), batch_size=32)
    with pytest.raises(DurationError, match="batch size"):
        durations.steps("total", conf(total_examples=100))
    with pytest.raises(DurationError, match="total number of steps"):
        durations.steps("warmup", conf(warmup_percent=0.1))


def test_bad_values():
    with pytest.raises(DurationError, match="whole number"):
        durations.steps("total", conf(total_steps=2.5))
    with pytest.raises(DurationError, match=">= 0"):
        durations.steps("total", conf(total_steps=-1))
    with pytest.raises(DurationError, match="must be a number"):
        durations.steps("total", conf(total_steps="100"))


def test_total_steps():
    assert durations.total_steps(conf(total_steps=123), None, None) == 123
    assert durations.total_steps(conf(total_epochs=2), 1000, 100) == 20
    assert durations.total_steps(conf(total_examples=1000), None, 64) == 16  # 15.6 -> 16
    with pytest.raises(DurationError, match="total_steps, total_epochs, total_examples"):
        durations.total_steps(conf(), 1000, 100)
    with pytest.raises(DurationError, match="total_percent cannot be used"):
        durations.total_steps(conf(total_percent=0.5), 1000, 100)
