"""Safe arithmetic: an AST walker over a small grammar, never ``eval``.

Hostile input is bounded before any work: at most MAX_CHARS characters and MAX_NODES syntax
nodes, nesting at most MAX_DEPTH deep, integers of at most MAX_BITS bits (a power is refused
*before* it is computed when its result would be larger), so every expression finishes in
well under a millisecond.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

MAX_CHARS = 500
MAX_NODES = 200
MAX_DEPTH = 40
MAX_BITS = 4_000  # about 1,200 decimal digits

Number = int | float


class CalculationError(ValueError):
    """The expression cannot be evaluated; the message says why, for the model and the user."""


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": lambda x, digits=0: round(x, _digits(digits)),
    "floor": math.floor,
    "ceil": math.ceil,
    "log": math.log,  # log(x) natural, log(x, base)
    "ln": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


def calculate(expression: str) -> Number:
    """The value of ``expression``; CalculationError when it is not plain arithmetic or too large."""
    if len(expression) > MAX_CHARS:
        raise CalculationError(f"the expression is longer than {MAX_CHARS} characters")
    source = expression.replace("^", "**").replace("\u00d7", "*").replace("÷", "/").strip()
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        raise CalculationError("this is not an arithmetic expression") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculationError(f"the expression has more than {MAX_NODES} parts")
    try:
        return _bounded(_eval(tree.body, 0))
    except ZeroDivisionError:
        raise CalculationError("division by zero") from None
    except OverflowError:
        raise CalculationError("the result is too large") from None
    except (ValueError, TypeError) as error:
        if isinstance(error, CalculationError):
            raise
        raise CalculationError(f"not defined: {error}") from None


def _eval(node: ast.expr, depth: int) -> Number:
    if depth > MAX_DEPTH:
        raise CalculationError(f"the expression is nested more than {MAX_DEPTH} deep")
    match node:
        case ast.Constant(value=bool()):
            raise CalculationError("only numbers are allowed")
        case ast.Constant(value=int() | float() as value):
            return _bounded(value)
        case ast.Name(id=name) if name in _CONSTANTS:
            return _CONSTANTS[name]
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            return -_eval(operand, depth + 1)
        case ast.UnaryOp(op=ast.UAdd(), operand=operand):
            return _eval(operand, depth + 1)
        case ast.BinOp(left=left, op=ast.Pow(), right=right):
            return _power(_eval(left, depth + 1), _eval(right, depth + 1))
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
            return _bounded(_BINARY[type(op)](_eval(left, depth + 1), _eval(right, depth + 1)))
        case ast.Call(func=ast.Name(id=name), args=args, keywords=[]) if name in _FUNCTIONS and 1 <= len(args) <= 2:
            return _bounded(_FUNCTIONS[name](*(_eval(a, depth + 1) for a in args)))
    raise CalculationError(f"{ast.unparse(node)[:40]!r} is not allowed; use numbers, + - * / // % ** and functions")


def _digits(digits: Number) -> int:
    # int.__round__ computes 10 ** -digits: a huge negative count would never finish.
    if not isinstance(digits, int) or abs(digits) > 100:
        raise CalculationError("round() takes a whole number of digits between -100 and 100")
    return digits


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        # The result has about bit_length(base) * exponent bits: refuse before computing it.
        if abs(base) > 1 and (abs(base).bit_length() - 1) * exponent > MAX_BITS:
            raise CalculationError("the result is too large")
        power: int = base**exponent
        return power
    if isinstance(exponent, int) and abs(exponent) > MAX_BITS:
        exponent = float(exponent)  # a float power of a huge exponent over- or underflows at once
    result = float(base) ** exponent
    if isinstance(result, complex):
        raise CalculationError("the result is not a real number")
    return _bounded(result)


def _bounded(value: Any) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculationError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise CalculationError("the result is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculationError("the result is too large" if not math.isnan(value) else "the result is not a number")
    return value


def as_text(value: Number) -> str:
    """The value as a person reads it: integers in full, others to 12 significant digits."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value) if isinstance(value, int) else f"{value:.12g}"
