import pytest

from core.errors import TiwizError
from core.training.schedule import parse_schedule


def test_bare_rate_runs_to_max_steps():
    s = parse_schedule("0.005")
    assert s.pairs == ((0.005, None),)
    assert s.rate_at(0) == 0.005 and s.rate_at(99999) == 0.005
    assert s.end_step(3000) == 3000 and not s.stops_early(3000)


def test_pairs_are_absolute_end_steps():
    s = parse_schedule("0.005:100, 1e-3:1000, 1e-5")
    assert s.pairs == ((0.005, 100), (1e-3, 1000), (1e-5, None))
    assert s.rate_at(0) == 0.005
    assert s.rate_at(99) == 0.005
    assert s.rate_at(100) == 1e-3
    assert s.rate_at(999) == 1e-3
    assert s.rate_at(1000) == 1e-5
    assert s.end_step(5000) == 5000


def test_minus_one_means_until_the_end_and_ignores_the_rest():
    s = parse_schedule("0.01:10, 0.001:-1, 0.5:99999")
    assert s.pairs == ((0.01, 10), (0.001, None))
    assert s.end_step(77) == 77


def test_last_pair_ends_training_early_like_a1111():
    s = parse_schedule("0.005:100, 1e-3:1000")
    assert s.end_step(3000) == 1000
    assert s.stops_early(3000)
    assert s.end_step(500) == 500 and not s.stops_early(500)


def test_numbers_and_spacing_accepted():
    assert parse_schedule(0.01).pairs == ((0.01, None),)
    assert parse_schedule("  5e-3 : 10 ,, 1e-4 ").pairs == ((0.005, 10), (1e-4, None))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("abc", "'abc'"),
        ("0.1:ten", "whole number"),
        ("0.1:100, 0.01:50", "greater than the previous"),
        ("0.1:0", "positive step"),
        ("0.1:1:2", "more than one ':'"),
        ("-0.1", ">= 0"),
        ("nan", "finite"),
    ],
)
def test_errors_are_clear_and_name_the_field(text, fragment):
    with pytest.raises(TiwizError) as err:
        parse_schedule(text, field="lr")
    message = str(err.value)
    assert message.startswith("lr:")
    assert fragment in message
