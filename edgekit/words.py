"""Words every part of the host side uses, defined once.

    PRECISIONS, Precision        the precisions a recipe and a profile speak of
    PLAIN, check_plain           names and versions that become paths on a device (the
                                 device's own rule, edgekit.device.state)
    utc_now, iso_utc, epoch_of   UTC times to the second, as every record writes them
    first_line                   an exception as one line, for records and messages
"""

from __future__ import annotations

import calendar
import time
from typing import Literal

from edgekit.device.state import NAME_PATTERN as PLAIN
from edgekit.device.state import TIME_FORMAT, utc_now

__all__ = ["PRECISIONS", "Precision", "INT8", "WEIGHT_ONLY", "PLAIN", "check_plain", "utc_now", "iso_utc", "epoch_of", "first_line",
           "TIME_FORMAT"]

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static", "int8-token", "int8-block", "int4-block")
Precision = Literal["fp32", "fp16", "int8-dynamic", "int8-static", "int8-token", "int8-block", "int4-block"]
INT8 = ("int8-dynamic", "int8-static", "int8-token")  # activations and weights in INT8
WEIGHT_ONLY = ("int8-block", "int4-block")  # weights in blocks, activations float (MatMulNBits): transformers, language models


def check_plain(value: str, flag: str) -> str:
    """`value` when it is a plain name (see PLAIN); ConfigError naming `flag` otherwise."""
    from edgekit.device.state import RunnerError, check_name
    from edgekit.errors import ConfigError

    try:
        return check_name(value, flag)
    except RunnerError as exc:
        raise ConfigError(str(exc)) from exc


def iso_utc(epoch: float) -> str:
    return time.strftime(TIME_FORMAT, time.gmtime(epoch))


def epoch_of(iso: str) -> int:
    return calendar.timegm(time.strptime(iso, TIME_FORMAT))


def first_line(exc: BaseException) -> str:
    """'ValueError: the first line of its message' (or 'no message')."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no message'}"
