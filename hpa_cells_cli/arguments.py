"""argparse types for the commands' numeric options: a bad value stops the command before it starts, with
argparse's one line `error: argument --OPTION: must be ..., got 'VALUE'` and exit code 2."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type for a whole number >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def finite_number(above: float | None = None, at_most: float | None = None) -> Callable[[str], float]:
    """An argparse type for a finite number, > `above` and <= `at_most` when given."""
    wanted = "a finite number"
    if above is not None and at_most is not None:
        wanted = f"a number > {above:g} and <= {at_most:g}"
    elif above is not None:
        wanted = f"a finite number > {above:g}"
    elif at_most is not None:
        wanted = f"a finite number <= {at_most:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if (not math.isfinite(value) or (above is not None and value <= above)
                or (at_most is not None and value > at_most)):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = wanted
    return parse


# train.py's option types (their messages are part of train.py's tested interface)

def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def fold_count(text: str) -> int:
    """argparse type: 0 (one shuffled split) or a number of folds >= 2."""
    value = _integer(text)
    if value < 0 or value == 1:
        raise argparse.ArgumentTypeError(f"must be 0 (one shuffled split) or at least 2 folds, got {value}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def open_fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    value = _number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a loss weight; 0 turns the term off)."""
    value = _number(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def rounds_option(text: str) -> str | int:
    """argparse type: `auto` or a whole number >= 0 (self-training rounds)."""
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be auto or a whole number >= 0, got {text}")
    return value


def fraction_option(text: str) -> str | float:
    """argparse type: `auto` or a number in [0, 4] (mosaic bags per training image)."""
    if text == "auto":
        return "auto"
    value = _number(text)
    if not 0.0 <= value <= 4.0:
        raise argparse.ArgumentTypeError(f"must be auto or a number in [0, 4], got {text}")
    return value
