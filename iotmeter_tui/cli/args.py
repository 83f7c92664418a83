"""Argument types every `iotmeter` subcommand shares, so one rule holds everywhere (a number of
seconds is finite and above 0 in `simulate`, `command send` and `ota status` alike)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def key_value(text: str) -> tuple[str, Any]:
    """KEY=VALUE; VALUE as JSON when it parses (`3`, `true`, `"x"`), else the text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):  # nan fails both comparisons
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number greater than 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value
