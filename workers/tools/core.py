"""The shipped tools as plain functions: arguments in (as the contracts' schemas say), result out.

Each raises ToolError (a ValueError) with a message for the model when it cannot answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .calculator import as_text, calculate
from .units import ConversionError, convert, describe


class UnknownZoneError(ValueError):
    pass


def zone(name: str | None) -> ZoneInfo:
    """The IANA zone ``name`` (UTC when None or empty)."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: not a zone key at all (e.g. a path)
        raise UnknownZoneError(f"unknown time zone {name!r}; use an IANA name such as Europe/Paris") from None


def current_time(arguments: dict[str, Any], session_zone: str | None, now: datetime | None = None) -> dict[str, Any]:
    """The date and time now in the asked zone, else the session's, else UTC."""
    where = zone(arguments.get("time_zone") or session_zone)
    local = (now or datetime.now(tz=where)).astimezone(where)
    return {
        "iso": local.isoformat(timespec="seconds"),
        "time_zone": str(where.key),
        "weekday": local.strftime("%A"),
        "text": local.strftime("%A %d %B %Y, %H:%M") + f" ({where.key})",
    }


def calculation(arguments: dict[str, Any]) -> dict[str, Any]:
    expression = str(arguments.get("expression", ""))
    value = calculate(expression)
    # JSON numbers beyond a double's range are unreadable to most clients: the text keeps every digit.
    number = value if abs(value) < 2**53 else float(f"{value:.15e}")
    return {"expression": expression, "value": number, "text": f"{expression} = {as_text(value)}"}


def conversion(arguments: dict[str, Any]) -> dict[str, Any]:
    value, source, target = arguments.get("value"), str(arguments.get("from_unit", "")), str(arguments.get("to_unit"))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConversionError("value must be a number")
    result, unit = convert(float(value), source, target)
    return {"value": result, "unit": unit, "text": describe(value, source, result, unit)}
