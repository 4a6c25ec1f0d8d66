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
