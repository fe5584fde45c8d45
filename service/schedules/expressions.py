"""The ``lr_lambda`` expression language.

``LambdaLR`` and ``MultiplicativeLR`` take ``lr_lambda`` as a small arithmetic expression in
the single variable ``epoch`` (the scheduler's step count), for example::

    0.95 ** epoch
    min(1.0, (epoch + 1) / 500)
    epoch / 2500 if epoch < 2500 else 0.09996 ** (1.0001 ** (epoch - 2499)) / 0.1

The expression is parsed and checked against a fixed whitelist; it is never run as Python code.

What you can write
------------------
- the variable ``epoch`` and the constants ``pi`` and ``e``;
- number literals such as ``3``, ``0.5``, ``1e-3``, ``1_000`` (no strings, booleans, complex
  numbers or ``None``);
- arithmetic ``+ - * / // % **`` and unary ``-`` and ``+``;
- comparisons ``< <= > >= == !=``, chained as in Python (``0 < epoch < 10``); a comparison is
  ``1.0`` when true and ``0.0`` when false;
- ``and``, ``or``, ``not`` and the conditional ``a if cond else b``, with Python's rules (zero
  is false, any other number, including nan, is true; ``a and b`` gives ``a`` when ``a`` is
  false, else ``b``);
- the functions ``min(a, b, ...)``, ``max(a, b, ...)`` (at least two arguments), ``abs(x)``,
  ``exp(x)``, ``log(x)``, ``log(x, base)``, ``log2(x)``, ``log10(x)``, ``sqrt(x)``, ``sin(x)``,
  ``cos(x)``, ``tan(x)``, ``tanh(x)``, ``floor(x)`` and ``ceil(x)``, called with plain
  positional arguments.

Anything else (other names, attribute access, indexing, strings, lambdas, comprehensions,
keyword arguments, ``*``/``**`` unpacking, ``:=``, bitwise operators, ``is``/``in``...) is
rejected with a message naming the construct and its column.

How it is computed
------------------
All arithmetic is 64-bit floating point: ``epoch`` and every literal are floats, so
``9 ** 9 ** 9 ** 9`` is a float overflow, not a huge integer. Intermediate results follow
IEEE-754 as torch does: dividing by zero gives ``inf`` or ``nan``, ``log(0)`` is ``-inf``,
``log(-1)`` and ``sqrt(-1)`` are ``nan``, an overflowing ``**`` or ``exp`` is ``inf``, and
``min``/``max`` return ``nan`` when any argument is ``nan``. Only the value of the whole
expression is checked: if it is not finite at some epoch, evaluation fails with an error that
names the epoch and, where it can, the operation that went wrong (for example
``lr_lambda evaluated to inf at epoch 3: division by zero in '/' at column 2``). An
intermediate ``inf`` that the rest of the expression turns back into a finite number (as in
``min(1 / epoch, 1)`` at epoch 0, which is 1) is not an error, and only the branch a
conditional takes counts.

Limits
------
An expression may be at most ``max_length`` characters long (default 1000), nest at most
``max_depth`` levels of operations deep (default 32; parentheses alone do not count) and
contain at most ``max_nodes`` syntax-tree nodes (default 256; every number, name, operation
and call counts as one).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "Expression",
    "ExpressionError",
    "ExpressionEvaluationError",
    "ExpressionSyntaxError",
    "parse_expression",
]

VARIABLE = "epoch"
"""The one variable an expression may use."""

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
"""Named constants an expression may use."""

FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "min": (2, None),
    "max": (2, None),
    "abs": (1, 1),
    "exp": (1, 1),
    "log": (1, 2),
    "log2": (1, 1),
    "log10": (1, 1),
    "sqrt": (1, 1),
    "sin": (1, 1),
    "cos": (1, 1),
    "tan": (1, 1),
    "tanh": (1, 1),
    "floor": (1, 1),
    "ceil": (1, 1),
}
"""Callable functions: name -> (fewest, most arguments); ``None`` means no upper bound."""

DEPTH_CAP = 200
"""``max_depth`` larger than this is lowered to it: evaluation recurses once per level."""

_INF = math.inf
_NAN = math.nan

ScalarFn = Callable[[float], Any]


# --------------------------------------------------------------------------- errors


class ExpressionError(ValueError):
    """Base of all expression errors; ``message`` is the human-readable reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ExpressionSyntaxError(ExpressionError):
    """The text is not a valid expression: bad syntax, a forbidden construct or a limit."""


class ExpressionEvaluationError(ExpressionError):
    """Evaluating at ``epoch`` gave a non-finite value (or ``epoch`` itself was unusable).

    ``epoch`` is the offending epoch as a float (``inf`` for one too large to convert).
    """

    def __init__(self, message: str, epoch: float) -> None:
        super().__init__(message)
        self.epoch = epoch


# --------------------------------------------------------------------------- scalar semantics
# Python's float operators raise where IEEE-754 (and torch) return inf/nan. These wrappers
# return the IEEE result instead, so scalar and tensor evaluation agree on which epochs fail.


def _div_by_zero(a: float, b: float) -> float:
    """Return the IEEE value of ``a / b`` for ``b == ±0``."""
    if a != a or a == 0.0:
        return _NAN
    return math.copysign(_INF, a) * math.copysign(1.0, b)


def _div(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:
        return _div_by_zero(a, b)


def _floordiv(a: float, b: float) -> float:
    # Python's float // and torch.floor_divide share the fmod-based algorithm; for a zero
    # divisor torch returns a / b.
    try:
        return a // b
    except ZeroDivisionError:
        return _div_by_zero(a, b)


def _mod(a: float, b: float) -> float:
    try:
        return a % b
    except ZeroDivisionError:
        return _NAN


def _is_odd_integer(v: float) -> bool:
    return v == math.floor(v) and math.fmod(v, 2.0) != 0.0


def _pow(a: float, b: float) -> float:
    try:
        return math.pow(a, b)
    except OverflowError:
        return -_INF if a < 0.0 and _is_odd_integer(b) else _INF
    except ValueError:
        if a == 0.0:  # zero to a negative power
            return math.copysign(_INF, a) if _is_odd_integer(b) else _INF
        return _NAN  # negative base, non-integer exponent


def _exp(v: float) -> float:
    try:
        return math.exp(v)
    except OverflowError:
        return _INF


def _logarithm(fn: Callable[[float], float]) -> Callable[[float], float]:
    def log(v: float) -> float:
        try:
            return fn(v)
        except ValueError:
            return -_INF if v == 0.0 else _NAN

    return log


_log = _logarithm(math.log)
_log2 = _logarithm(math.log2)
_log10 = _logarithm(math.log10)


def _log_base(v: float, base: float) -> float:
    return _div(_log(v), _log(base))


def _nan_on_domain_error(fn: Callable[[float], float]) -> Callable[[float], float]:
    def wrapped(v: float) -> float:
        try:
            return fn(v)
        except ValueError:
            return _NAN

    return wrapped


_sqrt = _nan_on_domain_error(math.sqrt)
_sin = _nan_on_domain_error(math.sin)
_cos = _nan_on_domain_error(math.cos)
_tan = _nan_on_domain_error(math.tan)


def _floor(v: float) -> float:
    try:
        r = float(math.floor(v))
    except (OverflowError, ValueError):  # inf, nan
        return v
    return r if r else math.copysign(0.0, v)


def _ceil(v: float) -> float:
    try:
        r = float(math.ceil(v))
    except (OverflowError, ValueError):
        return v
    return r if r else math.copysign(0.0, v)


def _min2(a: float, b: float) -> float:
    # nan-propagating like torch.minimum (Python's min() is order dependent with nan).
    if b < a:
        return b
    if a <= b:
        return a
    return _NAN


def _max2(a: float, b: float) -> float:
    if a < b:
        return b
    if b <= a:
        return a
    return _NAN


def _fold(pair: Callable[[float, float], float], values: Sequence[float]) -> float:
    result = values[0]
    for v in values[1:]:
        result = pair(result, v)
    return result


_SCALAR_FUNCTIONS: dict[str, Callable[[float], float]] = {
    "abs": abs,
    "exp": _exp,
    "log": _log,
    "log2": _log2,
    "log10": _log10,
    "sqrt": _sqrt,
    "sin": _sin,
    "cos": _cos,
    "tan": _tan,
    "tanh": math.tanh,
    "floor": _floor,
    "ceil": _ceil,
}


# --------------------------------------------------------------------------- tensor semantics


def _tensor_mod(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Python's float ``%``: torch.remainder, but a zero result takes the divisor's sign."""
    mod = torch.fmod(a, b)
    mod = torch.where((mod != 0) & ((b < 0) != (mod < 0)), mod + b, mod)
    return torch.where(mod == 0, torch.copysign(torch.zeros_like(mod), b), mod)


def _fold_tensors(
    pair: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], values: Sequence[torch.Tensor]
) -> torch.Tensor:
    result = values[0]
    for v in values[1:]:
        result = pair(result, v)
    return result


_TENSOR_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "abs": torch.abs,
    "exp": torch.exp,
    "log": torch.log,
    "log2": torch.log2,
    "log10": torch.log10,
    "sqrt": torch.sqrt,
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "tanh": torch.tanh,
    "floor": torch.floor,
    "ceil": torch.ceil,
}


# --------------------------------------------------------------------------- compiled nodes


def _finite(v: float) -> bool:
    return v - v == 0.0  # false for inf and nan


def _blame(value: float, args: Sequence[tuple[float, str | None]]) -> str | None:
    """Return the cause carried by the non-finite argument that ``value`` came from."""
    for v, cause in args:
        if not _finite(v) and (v == value or (v != v and value != value)):
            return cause
    for v, cause in args:
        if not _finite(v):
            return cause
    return None


class _Node:
    """One compiled operation.

    ``scalar()`` builds a closure over the children's closures (built once, called per epoch),
    ``tensor()`` evaluates elementwise with torch ops, and ``explain()`` is a slow scalar
    evaluation that also returns why a non-finite value appeared (used only for messages).
    """

    __slots__ = ("pos",)

    def __init__(self, pos: str) -> None:
        self.pos = pos

    def children(self) -> tuple[_Node, ...]:
        return ()

    def scalar(self) -> ScalarFn:
        raise NotImplementedError

    def truth(self) -> ScalarFn:
        """Return a closure whose result has the truthiness of this node's value."""
        return self.scalar()

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tensor_truth(self, x: torch.Tensor) -> torch.Tensor:
        return self.tensor(x) != 0

    def explain(self, x: float) -> tuple[float, str | None]:
        raise NotImplementedError


class _Var(_Node):
    __slots__ = ()

    def scalar(self) -> ScalarFn:
        return _identity

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def explain(self, x: float) -> tuple[float, str | None]:
        return x, None


def _identity(x: float) -> float:
    return x


class _Const(_Node):
    __slots__ = ("value",)

    def __init__(self, value: float, pos: str) -> None:
        super().__init__(pos)
        self.value = value

    def scalar(self) -> ScalarFn:
        c = self.value
        return lambda x: c

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((), self.value, dtype=torch.float64, device=x.device)

    def explain(self, x: float) -> tuple[float, str | None]:
        return self.value, None


class _Neg(_Node):
    __slots__ = ("operand",)

    def __init__(self, operand: _Node, pos: str) -> None:
        super().__init__(pos)
        self.operand = operand

    def children(self) -> tuple[_Node, ...]:
        return (self.operand,)

    def scalar(self) -> ScalarFn:
        f = self.operand.scalar()
        return lambda x: -f(x)

    def truth(self) -> ScalarFn:
        return self.operand.truth()

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        return torch.neg(self.operand.tensor(x))

    def explain(self, x: float) -> tuple[float, str | None]:
        v, cause = self.operand.explain(x)
        return -v, cause


class _Not(_Node):
    __slots__ = ("operand",)

    def __init__(self, operand: _Node, pos: str) -> None:
        super().__init__(pos)
        self.operand = operand

    def children(self) -> tuple[_Node, ...]:
        return (self.operand,)

    def scalar(self) -> ScalarFn:
        t = self.operand.truth()
        return lambda x: 0.0 if t(x) else 1.0

    def truth(self) -> ScalarFn:
        t = self.operand.truth()
        return lambda x: not t(x)

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        return self.tensor_truth(x).to(torch.float64)

    def tensor_truth(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logical_not(self.operand.tensor_truth(x))

    def explain(self, x: float) -> tuple[float, str | None]:
        v, _ = self.operand.explain(x)
        return (0.0 if v else 1.0), None


# symbol -> (scalar op, tensor op)
_BINARY: dict[str, tuple[Callable[[float, float], float], Callable[..., torch.Tensor]]] = {
    "+": (operator.add, torch.add),
    "-": (operator.sub, torch.sub),
    "*": (operator.mul, torch.mul),
    "/": (_div, torch.div),
    "//": (_floordiv, torch.floor_divide),
    "%": (_mod, _tensor_mod),
    "**": (_pow, torch.pow),
}
# Python's own operator is exact and cannot raise when the divisor is a nonzero constant.
_NONZERO_DIVISOR: dict[str, Callable[[float, float], float]] = {
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
}


def _binary_event(symbol: str, a: float, b: float) -> str:
    """Return why ``a <symbol> b`` of two finite numbers is not finite."""
    if symbol in _NONZERO_DIVISOR and b == 0.0:
        return f"division by zero in '{symbol}'"
    if symbol == "**" and a == 0.0 and b < 0.0:
        return "0 raised to a negative power in '**'"
    if symbol == "**" and a < 0.0 and b != math.floor(b):
        return "negative number raised to a non-integer power in '**'"
    return f"overflow in '{symbol}'"


class _Binary(_Node):
    __slots__ = ("left", "right", "symbol")

    def __init__(self, symbol: str, left: _Node, right: _Node, pos: str) -> None:
        super().__init__(pos)
        self.symbol = symbol
        self.left = left
        self.right = right

    def children(self) -> tuple[_Node, ...]:
        return (self.left, self.right)

    def scalar(self) -> ScalarFn:
        op = _BINARY[self.symbol][0]
        left, right = self.left, self.right
        if isinstance(right, _Const):
            c = right.value
            if c != 0.0 and self.symbol in _NONZERO_DIVISOR:
                op = _NONZERO_DIVISOR[self.symbol]
            if isinstance(left, _Var):
                return lambda x: op(x, c)
            fl = left.scalar()
            return lambda x: op(fl(x), c)
        if isinstance(left, _Const):
            c = left.value
            if isinstance(right, _Var):
                return lambda x: op(c, x)
            fr = right.scalar()
            return lambda x: op(c, fr(x))
        fl, fr = left.scalar(), right.scalar()
        if isinstance(left, _Var):
            return lambda x: op(x, fr(x))
        if isinstance(right, _Var):
            return lambda x: op(fl(x), x)
        return lambda x: op(fl(x), fr(x))

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        return _BINARY[self.symbol][1](self.left.tensor(x), self.right.tensor(x))

    def explain(self, x: float) -> tuple[float, str | None]:
        a = self.left.explain(x)
        b = self.right.explain(x)
        value = _BINARY[self.symbol][0](a[0], b[0])
        if _finite(value):
            return value, None
        if _finite(a[0]) and _finite(b[0]):
            return value, f"{_binary_event(self.symbol, a[0], b[0])} at {self.pos}"
        return value, _blame(value, (a, b))


# symbol -> (scalar op, tensor op)
_COMPARE: dict[str, tuple[Callable[[float, float], bool], Callable[..., torch.Tensor]]] = {
    "<": (operator.lt, torch.lt),
    "<=": (operator.le, torch.le),
    ">": (operator.gt, torch.gt),
    ">=": (operator.ge, torch.ge),
    "==": (operator.eq, torch.eq),
    "!=": (operator.ne, torch.ne),
}


class _Compare(_Node):
    __slots__ = ("operands", "symbols")

    def __init__(self, symbols: list[str], operands: list[_Node], pos: str) -> None:
        super().__init__(pos)
        self.symbols = symbols
        self.operands = operands

    def children(self) -> tuple[_Node, ...]:
        return tuple(self.operands)

    def truth(self) -> ScalarFn:
        ops = [_COMPARE[s][0] for s in self.symbols]
        if len(ops) == 1:
            op = ops[0]
            left, right = self.operands
            if isinstance(left, _Var) and isinstance(right, _Const):
                c = right.value
                return lambda x: op(x, c)
            if isinstance(left, _Const) and isinstance(right, _Var):
                c = left.value
                return lambda x: op(c, x)
            fl, fr = left.scalar(), right.scalar()
            return lambda x: op(fl(x), fr(x))
        first = self.operands[0].scalar()
        rest = list(zip(ops, [o.scalar() for o in self.operands[1:]], strict=True))

        def chain(x: float) -> bool:
            left = first(x)
            for op, f in rest:
                right = f(x)
                if not op(left, right):
                    return False
                left = right
            return True

        return chain

    def scalar(self) -> ScalarFn:
        t = self.truth()
        return lambda x: 1.0 if t(x) else 0.0

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        return self.tensor_truth(x).to(torch.float64)

    def tensor_truth(self, x: torch.Tensor) -> torch.Tensor:
        values = [o.tensor(x) for o in self.operands]
        result = _COMPARE[self.symbols[0]][1](values[0], values[1])
        for i in range(1, len(self.symbols)):
            result = result & _COMPARE[self.symbols[i]][1](values[i], values[i + 1])
        return result

    def explain(self, x: float) -> tuple[float, str | None]:
        values = [o.explain(x)[0] for o in self.operands]
        ok = all(_COMPARE[s][0](values[i], values[i + 1]) for i, s in enumerate(self.symbols))
        return (1.0 if ok else 0.0), None


class _BoolOp(_Node):
    __slots__ = ("is_and", "values")

    def __init__(self, is_and: bool, values: list[_Node], pos: str) -> None:
        super().__init__(pos)
        self.is_and = is_and
        self.values = values

    def children(self) -> tuple[_Node, ...]:
        return tuple(self.values)

    def _build(self, fns: list[ScalarFn]) -> ScalarFn:
        if len(fns) == 2:
            fa, fb = fns
            if self.is_and:
                return lambda x: fa(x) and fb(x)
            return lambda x: fa(x) or fb(x)
        head, last = fns[:-1], fns[-1]
        is_and = self.is_and

        def chain(x: float) -> Any:
            for f in head:
                v = f(x)
                if bool(v) != is_and:  # `and` stops at a false value, `or` at a true one
                    return v
            return last(x)

        return chain

    def scalar(self) -> ScalarFn:
        return self._build([v.scalar() for v in self.values])

    def truth(self) -> ScalarFn:
        return self._build([v.truth() for v in self.values])

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        values = [v.tensor(x) for v in self.values]
        result = values[-1]
        for v in reversed(values[:-1]):
            result = (
                torch.where(v != 0, result, v) if self.is_and else torch.where(v != 0, v, result)
            )
        return result

    def explain(self, x: float) -> tuple[float, str | None]:
        for node in self.values[:-1]:
            v, cause = node.explain(x)
            if bool(v) != self.is_and:
                return v, cause
        return self.values[-1].explain(x)


class _IfExp(_Node):
    __slots__ = ("body", "orelse", "test")

    def __init__(self, test: _Node, body: _Node, orelse: _Node, pos: str) -> None:
        super().__init__(pos)
        self.test = test
        self.body = body
        self.orelse = orelse

    def children(self) -> tuple[_Node, ...]:
        return (self.test, self.body, self.orelse)

    def scalar(self) -> ScalarFn:
        t, fb, fo = self.test.truth(), self.body.scalar(), self.orelse.scalar()
        return lambda x: fb(x) if t(x) else fo(x)

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        # Both branches are computed; where() keeps only the taken one, so an inf/nan in the
        # other branch never reaches the result.
        return torch.where(self.test.tensor_truth(x), self.body.tensor(x), self.orelse.tensor(x))

    def explain(self, x: float) -> tuple[float, str | None]:
        test, _ = self.test.explain(x)
        return self.body.explain(x) if test else self.orelse.explain(x)


def _call_event(name: str, values: Sequence[float]) -> str:
    """Return why ``name(*values)`` of finite arguments is not finite."""
    if name in ("log", "log2", "log10"):
        if values[0] == 0.0:
            return f"{name}() of zero"
        if values[0] < 0.0:
            return f"{name}() of a negative number"
        if len(values) > 1 and values[1] <= 0.0:
            return "log() with a base that is not positive"
        if len(values) > 1 and values[1] == 1.0:
            return "log() with base 1"
    if name == "sqrt":
        return "sqrt() of a negative number"
    return f"overflow in {name}()"


class _Call(_Node):
    __slots__ = ("args", "name")

    def __init__(self, name: str, args: list[_Node], pos: str) -> None:
        super().__init__(pos)
        self.name = name
        self.args = args

    def children(self) -> tuple[_Node, ...]:
        return tuple(self.args)

    def _apply(self, values: Sequence[float]) -> float:
        if self.name == "min":
            return _fold(_min2, values)
        if self.name == "max":
            return _fold(_max2, values)
        if len(values) == 2:  # log(x, base)
            return _log_base(values[0], values[1])
        return _SCALAR_FUNCTIONS[self.name](values[0])

    def scalar(self) -> ScalarFn:
        args = self.args
        if self.name in ("min", "max"):
            pair = _min2 if self.name == "min" else _max2
            if len(args) == 2:
                a, b = args
                if isinstance(b, _Const):
                    c, fa = b.value, a.scalar()
                    return lambda x: pair(fa(x), c)
                if isinstance(a, _Const):
                    c, fb = a.value, b.scalar()
                    return lambda x: pair(c, fb(x))
                fa, fb = a.scalar(), b.scalar()
                return lambda x: pair(fa(x), fb(x))
            first, rest = args[0].scalar(), [a.scalar() for a in args[1:]]

            def fold(x: float) -> float:
                v = first(x)
                for f in rest:
                    v = pair(v, f(x))
                return v

            return fold
        if len(args) == 2:
            fa, fb = args[0].scalar(), args[1].scalar()
            return lambda x: _log_base(fa(x), fb(x))
        fn = _SCALAR_FUNCTIONS[self.name]
        if isinstance(args[0], _Var):
            return fn
        fa = args[0].scalar()
        return lambda x: fn(fa(x))

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        values = [a.tensor(x) for a in self.args]
        if self.name == "min":
            return _fold_tensors(torch.minimum, values)
        if self.name == "max":
            return _fold_tensors(torch.maximum, values)
        if len(values) == 2:
            return torch.div(torch.log(values[0]), torch.log(values[1]))
        return _TENSOR_FUNCTIONS[self.name](values[0])

    def explain(self, x: float) -> tuple[float, str | None]:
        args = [a.explain(x) for a in self.args]
        value = self._apply([v for v, _ in args])
        if _finite(value):
            return value, None
        if all(_finite(v) for v, _ in args):
            return value, f"{_call_event(self.name, [v for v, _ in args])} at {self.pos}"
        return value, _blame(value, args)


# --------------------------------------------------------------------------- parsing


class _Locator:
    """Turns AST positions (in the stripped text, UTF-8 byte columns) into user positions."""

    def __init__(self, source: str, lead: int, text: str) -> None:
        self._source = source
        self._lead = lead
        self._lines = text.split("\n")
        self._encoded = [line.encode("utf-8") for line in self._lines]
        self._starts: list[int] = []
        start = 0
        for line in self._lines:
            self._starts.append(start)
            start += len(line) + 1
        self._multiline = "\n" in source

    def chars(self, lineno: int | None, col: int | None) -> str:
        """Describe the place at 1-based line ``lineno``, 0-based character column ``col``."""
        lineno = min(max(lineno or 1, 1), len(self._lines))
        offset = self._lead + self._starts[lineno - 1] + max(col or 0, 0)
        if not self._multiline:
            return f"column {offset + 1}"
        line = self._source.count("\n", 0, offset) + 1
        column = offset - (self._source.rfind("\n", 0, offset) + 1) + 1
        return f"line {line}, column {column}"

    def _char_col(self, lineno: int, byte_col: int) -> int:
        line = self._lines[lineno - 1] if 0 < lineno <= len(self._lines) else ""
        if line.isascii():
            return byte_col
        return len(self._encoded[lineno - 1][:byte_col].decode("utf-8", "replace"))

    def node(self, node: ast.AST) -> str:
        """Describe where ``node`` starts."""
        lineno = getattr(node, "lineno", 1)
        return self.chars(lineno, self._char_col(lineno, getattr(node, "col_offset", 0)))

    def attribute(self, node: ast.Attribute) -> str:
        """Describe where the ``.name`` of an attribute access is."""
        lineno = node.end_lineno or node.lineno
        byte_col = (node.end_col_offset or 0) - len(node.attr.encode("utf-8")) - 1
        return self.chars(lineno, self._char_col(lineno, max(byte_col, 0)))

    def operator(self, left: ast.AST, right: ast.AST, whole: ast.AST) -> str:
        """Describe where the operator between ``left`` and ``right`` is."""
        lineno = getattr(left, "end_lineno", None)
        if lineno is None or lineno != getattr(right, "lineno", None):
            return self.node(whole)
        line = self._encoded[lineno - 1]
        start = getattr(left, "end_col_offset", 0) or 0
        between = line[start : right.col_offset]
        skipped = len(between) - len(between.lstrip(b" \t\\)"))
        return self.chars(lineno, self._char_col(lineno, start + skipped))


_BINOP_SYMBOLS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}
_FORBIDDEN_OPERATORS: dict[type[ast.AST], str] = {
    ast.MatMult: "'@'",
    ast.BitAnd: "'&'",
    ast.BitOr: "'|'",
    ast.BitXor: "'^' (use '**' for powers)",
    ast.LShift: "'<<'",
    ast.RShift: "'>>'",
    ast.Invert: "'~'",
    ast.Is: "'is'",
    ast.IsNot: "'is not'",
    ast.In: "'in'",
    ast.NotIn: "'not in'",
}
_COMPARE_SYMBOLS: dict[type[ast.cmpop], str] = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
}
_CONSTRUCT_NAMES: dict[str, str] = {
    "Subscript": "indexing/subscript '[...]'",
    "Slice": "slice",
    "Lambda": "lambda",
    "ListComp": "list comprehension",
    "SetComp": "set comprehension",
    "DictComp": "dict comprehension",
    "GeneratorExp": "generator expression",
    "JoinedStr": "f-string",
    "FormattedValue": "f-string",
    "TemplateStr": "template string",
    "NamedExpr": "assignment expression ':='",
    "List": "list",
    "Tuple": "tuple",
    "Set": "set",
    "Dict": "dict",
    "Starred": "'*' unpacking",
    "Await": "'await'",
    "Yield": "'yield'",
    "YieldFrom": "'yield from'",
}
_ALLOWED_FUNCTIONS = ", ".join(sorted(FUNCTIONS))


class _Compiler:
    def __init__(self, locator: _Locator) -> None:
        self.loc = locator

    def error(self, what: str, where: str, hint: str = "") -> ExpressionSyntaxError:
        return ExpressionSyntaxError(f"{what} is not allowed at {where}{hint}")

    def build(self, node: ast.AST) -> _Node:
        method = getattr(self, "_compile_" + type(node).__name__, None)
        if method is None:
            what = _CONSTRUCT_NAMES.get(type(node).__name__, type(node).__name__)
            raise self.error(what, self.loc.node(node))
        return _fold_constants(method(node))

    def _compile_Constant(self, node: ast.Constant) -> _Node:
        value, where = node.value, self.loc.node(node)
        if isinstance(value, bool):
            raise self.error(f"boolean literal {value}", where, " (use 1 or 0)")
        if isinstance(value, (int, float)):
            try:
                number = float(value)
            except OverflowError:
                number = _INF
            if not _finite(number):
                raise ExpressionSyntaxError(
                    f"number literal at {where} is too large for a 64-bit float"
                )
            return _Const(number, where)
        if isinstance(value, str):
            raise self.error("string literal", where)
        if isinstance(value, complex):
            raise self.error(f"complex number literal {value!r}", where)
        if value is None:
            raise self.error("None", where)
        if value is Ellipsis:
            raise self.error("'...'", where)
        raise self.error(f"{type(value).__name__} literal", where)

    def _compile_Name(self, node: ast.Name) -> _Node:
        where = self.loc.node(node)
        if node.id == VARIABLE:
            return _Var(where)
        if node.id in CONSTANTS:
            return _Const(CONSTANTS[node.id], where)
        if node.id in FUNCTIONS:
            raise ExpressionSyntaxError(
                f"function {node.id!r} at {where} must be called, e.g. {node.id}(epoch)"
            )
        raise ExpressionSyntaxError(
            f"unknown name {node.id!r} at {where}; the only variable is 'epoch' and the "
            "only constants are 'pi' and 'e'"
        )

    def _compile_Attribute(self, node: ast.Attribute) -> _Node:
        raise self.error(f"attribute access '.{node.attr}'", self.loc.attribute(node))

    def _compile_UnaryOp(self, node: ast.UnaryOp) -> _Node:
        where = self.loc.node(node)
        if isinstance(node.op, ast.USub):
            return _Neg(self.build(node.operand), where)
        if isinstance(node.op, ast.UAdd):
            return self.build(node.operand)
        if isinstance(node.op, ast.Not):
            return _Not(self.build(node.operand), where)
        raise self.error(f"operator {_FORBIDDEN_OPERATORS[type(node.op)]}", where)

    def _compile_BinOp(self, node: ast.BinOp) -> _Node:
        where = self.loc.operator(node.left, node.right, node)
        symbol = _BINOP_SYMBOLS.get(type(node.op))
        if symbol is None:
            op = _FORBIDDEN_OPERATORS.get(type(node.op), type(node.op).__name__)
            raise self.error(f"operator {op}", where)
        return _Binary(symbol, self.build(node.left), self.build(node.right), where)

    def _compile_Compare(self, node: ast.Compare) -> _Node:
        operands = [node.left, *node.comparators]
        symbols = []
        for i, op in enumerate(node.ops):
            symbol = _COMPARE_SYMBOLS.get(type(op))
            if symbol is None:
                where = self.loc.operator(operands[i], operands[i + 1], node)
                raise self.error(f"operator {_FORBIDDEN_OPERATORS[type(op)]}", where)
            symbols.append(symbol)
        compiled = [self.build(o) for o in operands]
        return _Compare(symbols, compiled, self.loc.operator(operands[0], operands[1], node))

    def _compile_BoolOp(self, node: ast.BoolOp) -> _Node:
        values = [self.build(v) for v in node.values]
        return _BoolOp(isinstance(node.op, ast.And), values, self.loc.node(node))

    def _compile_IfExp(self, node: ast.IfExp) -> _Node:
        test, body, orelse = (self.build(n) for n in (node.test, node.body, node.orelse))
        return _IfExp(test, body, orelse, self.loc.node(node))

    def _compile_Call(self, node: ast.Call) -> _Node:
        where = self.loc.node(node)
        func = node.func
        if not isinstance(func, ast.Name):
            if isinstance(func, ast.Attribute):
                raise self.error(f"attribute access '.{func.attr}'", self.loc.attribute(func))
            raise self.error("calling anything but a named function", where)
        name = func.id
        if name not in FUNCTIONS:
            if name == VARIABLE or name in CONSTANTS:
                raise ExpressionSyntaxError(f"{name!r} at {where} is not a function")
            raise ExpressionSyntaxError(
                f"unknown function {name!r} at {where}; the functions are {_ALLOWED_FUNCTIONS}"
            )
        for keyword in node.keywords:
            kw = f"keyword argument '{keyword.arg}='" if keyword.arg else "'**' unpacking"
            raise self.error(
                f"{kw} in {name}()", self.loc.node(keyword), "; pass arguments by position"
            )
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.error(f"'*' unpacking in {name}()", self.loc.node(arg))
        fewest, most = FUNCTIONS[name]
        count = len(node.args)
        if count < fewest or (most is not None and count > most):
            if most is None:
                expected = f"at least {fewest} arguments"
            elif fewest == most:
                expected = f"exactly {fewest} argument" + ("s" if fewest > 1 else "")
            else:
                expected = f"{fewest} to {most} arguments"
            raise ExpressionSyntaxError(f"{name}() at {where} takes {expected}, got {count}")
        return _Call(name, [self.build(a) for a in node.args], where)


def _fold_constants(node: _Node) -> _Node:
    """Replace an operation on constants by its value when that value is finite.

    A non-finite constant subexpression (``1 / 0``, ``9 ** 9 ** 9 ** 9``) is left in place so
    that evaluation reports it, with its position, at the epoch being evaluated.
    """
    children = node.children()
    if not children or not all(isinstance(c, _Const) for c in children):
        return node
    value = float(node.scalar()(0.0))
    if not _finite(value):
        return node
    return _Const(value, node.pos)


def _check_size(tree: ast.AST, max_depth: int, max_nodes: int, requested_depth: int) -> None:
    """Enforce the depth and node limits without recursion (the tree may be very deep)."""
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        if isinstance(node, ast.expr):
            depth += 1
            count += 1
            if count > max_nodes:
                raise ExpressionSyntaxError(
                    f"expression is too large: more than max_nodes={max_nodes} nodes "
                    "(numbers, names, operations and calls)"
                )
            if depth > max_depth:
                capped = f", capped at {DEPTH_CAP}" if requested_depth > max_depth else ""
                raise ExpressionSyntaxError(
                    f"expression is nested too deeply: more than max_depth={requested_depth}"
                    f"{capped} levels"
                )
        stack.extend((child, depth) for child in ast.iter_child_nodes(node))


# --------------------------------------------------------------------------- public API


def _format_number(v: float) -> str:
    if _finite(v) and v == math.floor(v) and abs(v) < 1e16:
        return str(int(v))
    return repr(v)


TENSOR_CHUNK = 1 << 15
"""Elements per chunk of a tensor evaluation (32768 float64: 256 KiB, cache-sized; a chunk of
the 753-character probe, 167 operations, takes about 40 ms on an idle core). Smaller chunks
stop sooner but take the GIL more often from the requests computed beside them."""


class Expression:
    """A parsed, checked ``lr_lambda``; call it with an epoch to get a float.

    Build one with :func:`parse_expression`. Instances are usable directly as torch's
    ``lr_lambda``; their ``__dict__`` holds only ``source``, so ``LambdaLR.state_dict()``
    stores just the text.
    """

    __slots__ = ("__dict__", "_fn", "_limits", "_root")

    source: str

    def __init__(self, source: str, root: _Node, limits: tuple[int, int, int]) -> None:
        self.source = source
        self._root = root
        self._fn: ScalarFn = root.scalar()
        self._limits = limits

    def __call__(self, epoch: int | float) -> float:
        """Return the expression's value at ``epoch`` as a Python float.

        Raises ExpressionEvaluationError if the value is not finite (or ``epoch`` isn't).
        """
        try:
            x = float(epoch)
        except OverflowError:
            raise ExpressionEvaluationError("epoch is too large for a float", _INF) from None
        if x - x != 0.0:
            raise ExpressionEvaluationError(f"epoch must be a finite number, got {x}", x)
        result = self._fn(x)
        if result - result == 0.0:  # finite
            return float(result)
        raise self._failure(x, result)

    @property
    def size(self) -> int:
        """Return how many operations (nodes, after constant folding) one evaluation runs."""
        count = 0
        stack: list[_Node] = [self._root]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children())
        return count

    def evaluate_tensor(self, epoch: torch.Tensor) -> torch.Tensor:
        """Return the expression evaluated elementwise over ``epoch`` with torch ops.

        The result is a new float64 tensor of ``epoch``'s shape on ``epoch``'s device; it
        agrees with calling the expression on each element up to an ulp or so of exp/log/pow.
        Raises ExpressionEvaluationError naming the first (in flattened order) epoch whose
        value is not finite, or the first non-finite epoch.

        Long inputs are evaluated in chunks of TENSOR_CHUNK elements (a multiple of every
        SIMD width, so each element takes the kernel path it takes in one pass), with the
        request's budget checked between chunks: memory stays bounded and a computation
        past its time limit, or whose client left, stops within a chunk.
        """
        from service.schedules import budget

        x = epoch.detach()
        if x.dtype != torch.float64:
            x = x.to(torch.float64)
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            first = float(x.reshape(-1)[int(torch.nonzero(bad.reshape(-1))[0, 0])])
            raise ExpressionEvaluationError(f"epoch must be a finite number, got {first}", first)
        if x.numel() <= TENSOR_CHUNK:
            return self._evaluate_chunk(x, epoch)
        flat = x.reshape(-1)
        out = torch.empty_like(flat)
        for start in range(0, flat.numel(), TENSOR_CHUNK):
            budget.check()
            part = flat[start : start + TENSOR_CHUNK]
            out[start : start + TENSOR_CHUNK] = self._evaluate_chunk(part, part)
        return out.reshape(x.shape)

    def _evaluate_chunk(self, x: torch.Tensor, epoch: torch.Tensor) -> torch.Tensor:
        result = self._root.tensor(x)
        if result.shape != x.shape:
            result = result.expand(x.shape).clone()
        elif result is x or result is epoch:
            result = result.clone()
        bad = ~torch.isfinite(result)
        if bool(bad.any()):
            flat = int(torch.nonzero(bad.reshape(-1))[0, 0])
            at = float(x.reshape(-1)[flat])
            raise self._failure(at, float(result.reshape(-1)[flat]))
        return result

    def _failure(self, x: float, value: float) -> ExpressionEvaluationError:
        message = f"lr_lambda evaluated to {value!r} at epoch {_format_number(x)}"
        try:
            cause = self._root.explain(x)[1]
        except Exception:  # pragma: no cover - the explanation is best effort
            cause = None
        if cause:
            message += f": {cause}"
        return ExpressionEvaluationError(message, x)

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.source, *self._limits))


def _rebuild(source: str, max_length: int, max_depth: int, max_nodes: int) -> Expression:
    return parse_expression(source, max_length=max_length, max_depth=max_depth, max_nodes=max_nodes)


def parse_expression(
    source: str, *, max_length: int = 1000, max_depth: int = 32, max_nodes: int = 256
) -> Expression:
    """Parse and check ``source``; return the compiled :class:`Expression`.

    ``max_length`` bounds the text in characters, ``max_depth`` the nesting of operations
    (values above ``DEPTH_CAP`` are lowered to it) and ``max_nodes`` the syntax-tree size.
    Raises ExpressionSyntaxError, naming the construct and its column or the limit exceeded.
    """
    for name, limit in (
        ("max_length", max_length),
        ("max_depth", max_depth),
        ("max_nodes", max_nodes),
    ):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"{name} must be a positive integer, got {limit!r}")
    if not isinstance(source, str):
        raise ExpressionSyntaxError(
            f"lr_lambda must be a string expression, got {type(source).__name__}"
        )
    if len(source) > max_length:
        raise ExpressionSyntaxError(
            f"expression is too long: {len(source)} characters, more than max_length={max_length}"
        )
    text = source.strip()
    if not text:
        raise ExpressionSyntaxError("expression is empty")
    locator = _Locator(source, len(source) - len(source.lstrip()), text)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        where = locator.chars(exc.lineno, (exc.offset or 1) - 1)
        raise ExpressionSyntaxError(f"syntax error at {where}: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise ExpressionSyntaxError("expression is nested too deeply to parse") from None
    except ValueError as exc:  # e.g. NUL characters, over-long integer literals
        raise ExpressionSyntaxError(f"expression cannot be parsed: {exc}") from None
    _check_size(tree, min(max_depth, DEPTH_CAP), max_nodes, max_depth)
    root = _Compiler(locator).build(tree.body)
    return Expression(source, root, (max_length, max_depth, max_nodes))
