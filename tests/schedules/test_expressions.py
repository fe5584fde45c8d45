"""Tests for the safe ``lr_lambda`` expression language."""

import copy
import math
import pickle
import time
from collections.abc import Callable

import pytest
import torch

from service.schedules.expressions import (
    Expression,
    ExpressionError,
    ExpressionEvaluationError,
    ExpressionSyntaxError,
    parse_expression,
)

WARMUP = "epoch / 2500 if epoch < 2500 else 0.09996 ** (1.0001 ** (epoch - 2499)) / 0.1"
EPOCHS = [0, 1, 2, 3, 7, 10, 49, 50, 99, 100, 2499, 2500, 12345]
BIG_LIMITS = {"max_length": 10**7, "max_depth": 10**6, "max_nodes": 10**7}


def syntax_error(source: str, **limits: int) -> str:
    with pytest.raises(ExpressionSyntaxError) as info:
        parse_expression(source, **limits)
    assert info.value.message == str(info.value)
    return info.value.message


def evaluation_error(source: str, epoch: float) -> ExpressionEvaluationError:
    expr = parse_expression(source)
    with pytest.raises(ExpressionEvaluationError) as info:
        expr(epoch)
    return info.value


# --------------------------------------------------------------------------- values

VALUE_CASES: list[tuple[str, Callable[[int], float]]] = [
    ("0.95 ** epoch", lambda t: 0.95**t),
    ("epoch + 1 - 2 * 3 / 4", lambda t: t + 1 - 2 * 3 / 4),
    ("-epoch + +3 - -2", lambda t: -t + 3 + 2),
    ("2 ** -(epoch / 100)", lambda t: 2 ** -(t / 100)),
    ("(epoch - 50) % 7", lambda t: (t - 50) % 7),
    ("(epoch - 50) // 7", lambda t: (t - 50) // 7),
    ("(epoch - 50) % -7", lambda t: (t - 50) % -7),
    ("(50 - epoch) // -7.5", lambda t: (50 - t) // -7.5),
    ("(epoch - 50.5) % 2.25", lambda t: (t - 50.5) % 2.25),
    ("-epoch // 3 + -epoch % 3", lambda t: -t // 3 + -t % 3),
    ("1 if epoch < 10 else 0.5", lambda t: 1 if t < 10 else 0.5),
    ("0 < epoch < 10", lambda t: float(0 < t < 10)),
    ("0 <= epoch <= 10 < 2 * epoch", lambda t: float(0 <= t <= 10 < 2 * t)),
    ("epoch == 7", lambda t: float(t == 7)),
    ("epoch != 7", lambda t: float(t != 7)),
    ("epoch >= 100", lambda t: float(t >= 100)),
    ("epoch > 100", lambda t: float(t > 100)),
    ("(epoch > 5) * 2 + (epoch <= 5)", lambda t: (t > 5) * 2 + (t <= 5)),
    ("epoch and 5", lambda t: t and 5),
    ("epoch or 5", lambda t: t or 5),
    ("not epoch", lambda t: float(not t)),
    ("not epoch % 7", lambda t: float(not t % 7)),
    ("epoch > 1 and epoch < 50 or epoch == 0", lambda t: float(1 < t < 50 or t == 0)),
    ("epoch and 1 / epoch", lambda t: t and 1 / t),
    ("1 if epoch == 0 else 1 / epoch", lambda t: 1 if t == 0 else 1 / t),
    ("min(epoch, 100)", lambda t: min(t, 100)),
    ("max(epoch, 10, 3 * epoch - 200)", lambda t: max(t, 10, 3 * t - 200)),
    ("min(epoch / 10, 4, 2 + epoch)", lambda t: min(t / 10, 4, 2 + t)),
    ("abs(epoch - 50)", lambda t: abs(t - 50)),
    ("exp(-epoch / 100)", lambda t: math.exp(-t / 100)),
    ("log(epoch + 1)", lambda t: math.log(t + 1)),
    ("log(epoch + 2, 3)", lambda t: math.log(t + 2) / math.log(3)),
    ("log2(epoch + 1)", lambda t: math.log2(t + 1)),
    ("log10(epoch + 1)", lambda t: math.log10(t + 1)),
    ("sqrt(epoch)", lambda t: math.sqrt(t)),
    ("sin(epoch / 7)", lambda t: math.sin(t / 7)),
    ("cos(epoch / 7)", lambda t: math.cos(t / 7)),
    ("tan(epoch / 20000)", lambda t: math.tan(t / 20000)),
    ("tanh(epoch / 100 - 1)", lambda t: math.tanh(t / 100 - 1)),
    ("floor(epoch / 7 - 3)", lambda t: math.floor(t / 7 - 3)),
    ("ceil(epoch / 7 - 3)", lambda t: math.ceil(t / 7 - 3)),
    ("pi * epoch", lambda t: math.pi * t),
    ("e ** 2 + epoch", lambda t: math.e**2 + t),
    ("0.5 * (1 + cos(pi * epoch / 12345))", lambda t: 0.5 * (1 + math.cos(math.pi * t / 12345))),
    ("1_000 + 0x10 + 1e-3 + .5", lambda t: 1000 + 16 + 1e-3 + 0.5),
]


@pytest.mark.parametrize(("source", "reference"), VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_values_match_python(source: str, reference: Callable[[int], float]) -> None:
    expr = parse_expression(source)
    for t in EPOCHS:
        value = expr(t)
        assert type(value) is float
        assert value == pytest.approx(float(reference(t)), rel=1e-14, abs=0), (source, t)
        assert expr(float(t)) == value


def test_source_and_repr() -> None:
    expr = parse_expression("  0.95 ** epoch ")
    assert isinstance(expr, Expression)
    assert expr.source == "  0.95 ** epoch "
    assert "0.95 ** epoch" in repr(expr)


def test_arithmetic_is_float_only() -> None:
    assert parse_expression("2 ** 100")(0) == 2.0**100
    assert parse_expression("7 // 2")(0) == 3.0
    assert type(parse_expression("7 // 2")(0)) is float
    assert parse_expression("10 ** 20 + 1")(0) == 1e20  # float rounding, not integer maths
    assert parse_expression("99999999999999999999")(0) == 1e20


def test_python_truthiness_of_nan_in_conditionals() -> None:
    # nan is true in Python; the selected branch is finite, so this is fine.
    expr = parse_expression("1 if log(-1) else 2")
    assert expr(0) == 1.0
    assert expr.evaluate_tensor(torch.zeros(1)).tolist() == [1.0]


def test_intermediate_infinities_follow_ieee() -> None:
    # Only the final value must be finite: min(inf, 1) is 1, in scalar and tensor mode alike.
    expr = parse_expression("min(1 / epoch, 1)")
    assert expr(0) == 1.0
    assert expr.evaluate_tensor(torch.tensor([0.0, 2.0])).tolist() == [1.0, 0.5]
    assert parse_expression("0 and 1 / 0")(5) == 0.0


def test_warmup_formula_matches_the_loop() -> None:
    expr = parse_expression(WARMUP)
    lr = 0.0
    bad = []
    for t in range(15000):
        lr = 0.1 * t / 2500 if t < 2500 else lr**1.0001
        got = 0.1 * expr(t)
        if not math.isclose(got, lr, rel_tol=1e-9):
            bad.append((t, got, lr))
    assert not bad, bad[:5]


def test_scalar_call_is_cheap() -> None:
    expr = parse_expression(WARMUP)
    n = 20000
    start = time.perf_counter()
    for t in range(n):
        expr(t)
    per_call = (time.perf_counter() - start) / n
    assert per_call < 25e-6  # about 1 µs on a laptop; generous for slow CI machines


def test_state_dict_friendly() -> None:
    # LambdaLR/MultiplicativeLR.state_dict() store ``fn.__dict__.copy()`` of callable objects
    # and load_state_dict() updates it back: only the (picklable) source lives there.
    # (Not exercised through a real optimizer here: the first torch.optim use costs ~1.5 s.)
    expr = parse_expression("0.95 ** epoch")
    assert expr.__dict__ == {"source": "0.95 ** epoch"}
    expr.__dict__.update(expr.__dict__.copy())
    assert expr(2) == 0.95**2


def test_pickle_and_deepcopy() -> None:
    expr = parse_expression(WARMUP, max_length=500)
    for clone in (pickle.loads(pickle.dumps(expr)), copy.deepcopy(expr)):
        assert clone.source == WARMUP
        assert clone(3000) == expr(3000)


# --------------------------------------------------------------------------- tensor mode

TENSOR_CASES = [
    "0.95 ** epoch",
    WARMUP,
    "min(1.0, (epoch + 1) / 500)",
    "0.5 * (1 + cos(pi * epoch / 5000))",
    "exp(-epoch / 1000) + log(epoch + 1) + log(epoch + 2, 3)",
    "sqrt(epoch) / (1 + log2(epoch + 1) + log10(epoch + 1))",
    "(epoch - 2000) % 7 + (epoch - 2000) // 7 + (epoch - 2000) % -3.5 + (2000 - epoch) // -2.5",
    "1 / (epoch - 3) if epoch != 3 else 0",
    "epoch and 1 / epoch",
    "0 < epoch < 100 and 2 or 0.5",
    "not epoch % 10",
    "floor(epoch / 100) * 0.1 + ceil(epoch / 333) + abs(sin(epoch)) + tanh(epoch / 1000)",
    "max(epoch / 5000, 0.1, min(epoch, 3)) - tan(epoch / 7000)",
    "-(epoch ** 0.5) + 2 ** (epoch / 1000) + (-2.0) ** 3",
    "0.5",
    "epoch",
]


@pytest.mark.parametrize("source", TENSOR_CASES)
def test_tensor_matches_scalar(source: str) -> None:
    expr = parse_expression(source)
    epochs = torch.arange(0, 5001, dtype=torch.float64)
    got = expr.evaluate_tensor(epochs)
    expected = torch.tensor([expr(t) for t in range(5001)], dtype=torch.float64)
    assert got.dtype == torch.float64
    assert got.shape == epochs.shape
    assert got.device == epochs.device
    # torch.allclose rather than torch.testing.assert_close: the latter's first call costs ~1 s.
    worst = int(((got - expected).abs() / expected.abs().clamp_min(1e-300)).argmax())
    assert torch.allclose(got, expected, rtol=1e-12, atol=0), (worst, got[worst], expected[worst])


def test_tensor_floor_division_and_modulo_match_python_exactly() -> None:
    expr = parse_expression("(epoch - 13.5) // -2.5 * 1000 + (epoch - 13.5) % -2.5")
    epochs = torch.arange(-40, 41, dtype=torch.float64) / 4
    got = expr.evaluate_tensor(epochs).tolist()
    assert got == [(t - 13.5) // -2.5 * 1000 + (t - 13.5) % -2.5 for t in epochs.tolist()]
    assert got == [expr(t) for t in epochs.tolist()]


def test_tensor_input_handling() -> None:
    expr = parse_expression("epoch * 2")
    epochs = torch.arange(6).reshape(2, 3)  # integer input is converted
    got = expr.evaluate_tensor(epochs)
    assert got.dtype == torch.float64 and got.shape == (2, 3)
    assert got.tolist() == [[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]]

    identity = parse_expression("epoch")
    epochs = torch.arange(3, dtype=torch.float64)
    result = identity.evaluate_tensor(epochs)
    result += 1  # must not alias the input
    assert epochs.tolist() == [0.0, 1.0, 2.0]

    constant = parse_expression("2 * pi").evaluate_tensor(torch.zeros(2, 2))
    assert constant.shape == (2, 2) and constant.flatten().tolist() == [2 * math.pi] * 4


def test_tensor_masks_the_branch_not_taken() -> None:
    expr = parse_expression("0 if epoch < 5 else log(epoch - 5) + 1 / (epoch - 5)")
    with pytest.raises(ExpressionEvaluationError, match="epoch 5"):
        expr.evaluate_tensor(torch.arange(10, dtype=torch.float64))
    ok = parse_expression("0 if epoch <= 5 else log(epoch - 5) + 1 / (epoch - 5)")
    assert ok.evaluate_tensor(torch.arange(7, dtype=torch.float64)).tolist() == [0.0] * 6 + [1.0]


def test_tensor_error_names_the_first_offending_epoch() -> None:
    expr = parse_expression("1 / (epoch - 3) + 1 / (epoch - 7)")
    with pytest.raises(ExpressionEvaluationError) as info:
        expr.evaluate_tensor(torch.arange(10, dtype=torch.float64))
    assert info.value.epoch == 3
    assert "epoch 3" in info.value.message and "division by zero" in info.value.message
    with pytest.raises(ExpressionEvaluationError) as info:
        expr.evaluate_tensor(torch.tensor([9.0, 7.0, 3.0]))
    assert info.value.epoch == 7
    assert "epoch 7" in info.value.message

    with pytest.raises(ExpressionEvaluationError, match=r"inf at epoch 8: overflow in exp\(\)"):
        parse_expression("exp(epoch * 100)").evaluate_tensor(torch.arange(20))
    with pytest.raises(ExpressionEvaluationError, match="finite"):
        parse_expression("epoch").evaluate_tensor(torch.tensor([1.0, math.nan]))


# --------------------------------------------------------------------------- evaluation errors


def test_overflowing_power_tower_is_a_float_overflow() -> None:
    start = time.perf_counter()
    err = evaluation_error("9**9**9**9", 0)
    assert time.perf_counter() - start < 1.0
    assert err.epoch == 0
    assert "epoch 0" in err.message and "overflow in '**'" in err.message
    with pytest.raises(ExpressionEvaluationError, match="epoch 0"):
        parse_expression("9**9**9**9").evaluate_tensor(torch.zeros(3))


def test_exp_overflow_names_the_epoch() -> None:
    err = evaluation_error("exp(1000)", 12)
    assert err.epoch == 12
    assert err.message.startswith("lr_lambda evaluated to inf at epoch 12")
    assert "overflow in exp()" in err.message


def test_division_by_zero_names_the_epoch() -> None:
    expr = parse_expression("1/(epoch-3)")
    assert expr(2) == -1.0
    with pytest.raises(ExpressionEvaluationError) as info:
        expr(3)
    assert info.value.epoch == 3
    assert "division by zero" in info.value.message and "epoch 3" in info.value.message
    assert "column 2" in info.value.message
    assert "division by zero" in evaluation_error("0 / epoch", 0).message
    assert "division by zero in '//'" in evaluation_error("epoch // 0", 1).message
    assert "division by zero in '%'" in evaluation_error("epoch % 0", 1).message


@pytest.mark.parametrize(
    ("source", "epoch", "expected"),
    [
        ("log(-1)", 0, "nan at epoch 0: log() of a negative number"),
        ("log(epoch)", 0, "-inf at epoch 0: log() of zero"),
        ("log2(epoch - 1)", 0, "log2() of a negative number"),
        ("log10(0)", 4, "log10() of zero"),
        ("log(epoch, 1)", 2, "log() with base 1"),
        ("sqrt(epoch - 10)", 2, "nan at epoch 2: sqrt() of a negative number"),
        ("(-8) ** (1 / 3)", 0, "negative number raised to a non-integer power"),
        ("0 ** -epoch", 1, "0 raised to a negative power"),
        ("1e308 * (epoch + 10)", 0, "overflow in '*'"),
        ("min(log(epoch - 5), 1)", 0, "log() of a negative number"),
        ("1 + 2 * (3 / (epoch - epoch))", 7, "division by zero in '/' at column 12"),
        ("epoch if epoch else 1 / 0", 0, "division by zero in '/' at column 23"),
    ],
)
def test_domain_errors(source: str, epoch: int, expected: str) -> None:
    err = evaluation_error(source, epoch)
    assert expected in err.message
    assert err.epoch == epoch
    assert isinstance(err, ExpressionError) and isinstance(err, ValueError)


def test_bad_epochs() -> None:
    expr = parse_expression("1 if epoch > 0 else 2")
    with pytest.raises(ExpressionEvaluationError, match="finite"):
        expr(math.nan)
    with pytest.raises(ExpressionEvaluationError, match="finite"):
        expr(math.inf)
    with pytest.raises(ExpressionEvaluationError, match="too large"):
        expr(10**400)


# --------------------------------------------------------------------------- rejected input


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("__import__('os')", "unknown function '__import__' at column 1"),
        ("().__class__", "attribute access '.__class__' is not allowed at column 3"),
        ("epoch.real", "attribute access '.real' is not allowed at column 6"),
        ("(1).__class__.__bases__", "attribute access '.__bases__'"),
        ("abs.__self__", "attribute access"),
        ("[1][0]", "subscript"),
        ("'a'", "string literal is not allowed at column 1"),
        ("b'a'", "bytes literal"),
        ("lambda: 1", "lambda is not allowed at column 1"),
        ("(lambda: 1)()", "calling anything but a named function"),
        ("open('x')", "unknown function 'open' at column 1"),
        ("eval('1')", "unknown function 'eval'"),
        ("getattr(epoch, 'real')", "unknown function 'getattr'"),
        ("epoch.__class__(1)", "attribute access '.__class__'"),
        ("log(epoch, base=2)", "keyword argument 'base=' in log() is not allowed at column 12"),
        ("min(epoch, **{'a': 1})", "'**' unpacking"),
        ("min(*[1, 2])", "'*' unpacking"),
        ("foo(epoch)", "unknown function 'foo'"),
        ("x + 1", "unknown name 'x' at column 1"),
        ("epochs", "unknown name 'epochs'"),
        ("__builtins__", "unknown name '__builtins__'"),
        ("min", "function 'min' at column 1 must be called"),
        ("epoch(1)", "'epoch' at column 1 is not a function"),
        ("pi(1)", "'pi' at column 1 is not a function"),
        ("True", "boolean literal True"),
        ("None", "None is not allowed"),
        ("1j", "complex number literal"),
        ("...", "'...' is not allowed"),
        ("f'{epoch}'", "f-string"),
        ("(y := 1)", "assignment expression"),
        ("[x for x in (1,)]", "list comprehension"),
        ("sum(x for x in (1,))", "unknown function 'sum'"),
        ("(1, 2)", "tuple"),
        ("{1: 2}", "dict"),
        ("epoch ^ 2", "operator '^' (use '**' for powers) is not allowed at column 7"),
        ("epoch & 1", "operator '&'"),
        ("epoch << 1", "operator '<<'"),
        ("~epoch", "operator '~'"),
        ("epoch @ epoch", "operator '@'"),
        ("epoch is 1", "operator 'is' is not allowed at column 7"),
        ("epoch in (1,)", "operator 'in'"),
        ("exp(1, 2)", "exp() at column 1 takes exactly 1 argument, got 2"),
        ("log()", "log() at column 1 takes 1 to 2 arguments, got 0"),
        ("max(1)", "max() at column 1 takes at least 2 arguments, got 1"),
        ("1e999", "too large"),
        ("9" * 400, "too large"),
        ("1 +", "syntax error"),
        ("epoch +* 2", "syntax error at column 8"),
        ("epoch = 1", "syntax error"),
        ("import os", "syntax error"),
        ("1\x00", "null"),
        ("", "empty"),
        ("   ", "empty"),
    ],
)
def test_rejected(source: str, expected: str) -> None:
    assert expected in syntax_error(source)


def test_non_string_source() -> None:
    with pytest.raises(ExpressionSyntaxError, match="string"):
        parse_expression(12)  # type: ignore[arg-type]


def test_positions_account_for_leading_whitespace_and_lines() -> None:
    assert "column 4" in syntax_error("   foo")
    assert "line 2, column 3" in syntax_error("(epoch +\n  foo)")


def test_huge_sum_is_rejected_quickly() -> None:
    source = "+".join(["1"] * 200_000)
    start = time.perf_counter()
    message = syntax_error(source)
    assert "too long" in message and "max_length=1000" in message
    # Even with the length limit lifted the parser's own limits stop it, quickly.
    assert "too" in syntax_error(source, **BIG_LIMITS)
    assert time.perf_counter() - start < 1.5


def test_deep_nesting_is_rejected_quickly() -> None:
    start = time.perf_counter()
    parens = "(" * 2000 + "epoch" + ")" * 2000
    assert "max_length=1000" in syntax_error(parens)
    assert "nested parentheses" in syntax_error(parens, **BIG_LIMITS)
    assert "too" in syntax_error("-" * 2000 + "epoch", **BIG_LIMITS)
    assert "nested" in syntax_error("abs(" * 2000 + "epoch" + ")" * 2000, **BIG_LIMITS)
    assert time.perf_counter() - start < 1.0


def test_limits() -> None:
    assert "max_length=10" in syntax_error("epoch + 12345", max_length=10)
    assert parse_expression("epoch + 1234", max_length=12)(1) == 1235.0

    deep = "-" * 31 + "epoch"  # 32 levels
    assert parse_expression(deep)(1) == -1.0
    assert "nested too deeply" in syntax_error("-" + deep)
    assert "max_depth=32" in syntax_error("-" + deep)
    assert "max_depth=3" in syntax_error("1 + 2 * (3 - epoch)", max_depth=3)
    assert parse_expression("1 + 2 * (3 - epoch)", max_depth=4)(1) == 5.0
    assert "capped at 200" in syntax_error("-" * 201 + "epoch", **BIG_LIMITS)

    wide = "min(" + ",".join(["1"] * 300) + ")"  # shallow but 302 nodes
    assert "max_nodes=256" in syntax_error(wide)
    assert "too large" in syntax_error(wide)
    assert "max_nodes=4" in syntax_error("min(epoch, epoch, epoch)", max_nodes=4)
    assert parse_expression("min(epoch, epoch, epoch)", max_nodes=5)(2) == 2.0


@pytest.mark.parametrize("limit", ["max_length", "max_depth", "max_nodes"])
def test_limits_must_be_positive(limit: str) -> None:
    with pytest.raises(ValueError, match=limit):
        parse_expression("epoch", **{limit: 0})
