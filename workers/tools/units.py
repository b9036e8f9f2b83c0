"""Unit conversion by table: every unit is a factor to its dimension's base unit (temperatures by formula)."""

from __future__ import annotations

import math
import re

from .calculator import as_text

# dimension -> unit -> (factor to the base unit, names it goes by)
_TABLE: dict[str, dict[str, tuple[float, tuple[str, ...]]]] = {
    "length": {
        "m": (1.0, ("meter", "metre")),
        "km": (1000.0, ("kilometer", "kilometre")),
        "cm": (0.01, ("centimeter", "centimetre")),
        "mm": (0.001, ("millimeter", "millimetre")),
        "mi": (1609.344, ("mile",)),
        "yd": (0.9144, ("yard",)),
        "ft": (0.3048, ("foot", "feet")),
        "in": (0.0254, ("inch", "inches")),
        "nmi": (1852.0, ("nautical mile",)),
    },
    "mass": {
        "kg": (1.0, ("kilogram", "kilo")),
        "g": (0.001, ("gram",)),
        "mg": (1e-6, ("milligram",)),
        "t": (1000.0, ("tonne", "metric ton")),
        "lb": (0.45359237, ("pound", "lbs")),
        "oz": (0.028349523125, ("ounce",)),
        "st": (6.35029318, ("stone",)),
    },
    "volume": {
        "l": (1.0, ("liter", "litre")),
        "ml": (0.001, ("milliliter", "millilitre")),
        "m3": (1000.0, ("cubic meter", "cubic metre")),
        "gal": (3.785411784, ("gallon", "us gallon")),
        "qt": (0.946352946, ("quart",)),
        "pt": (0.473176473, ("pint",)),
        "cup": (0.2365882365, ("cups",)),
        "fl oz": (0.0295735295625, ("floz", "fluid ounce")),
    },
    "time": {
        "s": (1.0, ("sec", "second")),
        "ms": (0.001, ("millisecond",)),
        "min": (60.0, ("minute",)),
        "h": (3600.0, ("hr", "hour")),
        "day": (86400.0, ("d",)),
        "week": (604800.0, ("wk",)),
        "year": (31557600.0, ("yr",)),  # a Julian year
    },
    "speed": {
        "m/s": (1.0, ("meters per second", "mps")),
        "km/h": (1 / 3.6, ("kph", "kmh", "kilometers per hour")),
        "mph": (0.44704, ("miles per hour", "mi/h")),
        "kn": (1852 / 3600, ("knot",)),
    },
    "data": {
        "B": (1.0, ("byte",)),
        "kB": (1e3, ("kilobyte", "kb")),
        "MB": (1e6, ("megabyte", "mb")),
        "GB": (1e9, ("gigabyte", "gb")),
        "TB": (1e12, ("terabyte", "tb")),
        "KiB": (1024.0, ("kibibyte", "kib")),
        "MiB": (1024.0**2, ("mebibyte", "mib")),
        "GiB": (1024.0**3, ("gibibyte", "gib")),
    },
}
_TEMPERATURES: dict[str, tuple[str, ...]] = {
    "C": ("c", "celsius", "centigrade", "°c"),
    "F": ("f", "fahrenheit", "°f"),
    "K": ("k", "kelvin"),
}


class ConversionError(ValueError):
    """The units are unknown or of different kinds; the message says which."""


def _names() -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for dimension, units in _TABLE.items():
        for unit, (_, aliases) in units.items():
            for name in (unit, unit.lower(), *aliases):
                found.setdefault(name, (dimension, unit))
    for unit, aliases in _TEMPERATURES.items():
        for name in aliases:
            found[name] = ("temperature", unit)
    return found


_BY_NAME = _names()
_DEGREES = re.compile(r"^degrees?\s+", re.IGNORECASE)


def _unit(name: str) -> tuple[str, str]:
    key = _DEGREES.sub("", " ".join(name.split()))
    for candidate in (key, key.lower(), key.lower().removesuffix("s"), key.lower().removesuffix("es")):
        if candidate in _BY_NAME:
            return _BY_NAME[candidate]
    raise ConversionError(f"unknown unit {name!r}")


def convert(value: float, from_unit: str, to_unit: str) -> tuple[float, str]:
    """``value`` in ``to_unit`` and that unit's symbol."""
    if not math.isfinite(value):
        raise ConversionError("the value is not a finite number")
    (source_kind, source), (target_kind, target) = _unit(from_unit), _unit(to_unit)
    if source_kind != target_kind:
        raise ConversionError(f"cannot convert {source_kind} ({source}) to {target_kind} ({target})")
    if source_kind == "temperature":
        return _from_kelvin(_to_kelvin(value, source), target), f"°{target}" if target != "K" else "K"
    units = _TABLE[source_kind]
    return value * units[source][0] / units[target][0], target


def _to_kelvin(value: float, unit: str) -> float:
    return {"C": value + 273.15, "F": (value - 32) * 5 / 9 + 273.15, "K": value}[unit]


def _from_kelvin(kelvin: float, unit: str) -> float:
    return {"C": kelvin - 273.15, "F": (kelvin - 273.15) * 9 / 5 + 32, "K": kelvin}[unit]


def describe(value: float, from_unit: str, result: float, unit: str) -> str:
    return f"{as_text(value)} {from_unit} = {as_text(round(result, 10))} {unit}"
