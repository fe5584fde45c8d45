"""What every spec model shares: unknown fields named with a suggestion, and field types.

:class:`SpecModel` refuses unknown fields and non-finite numbers; an unknown field's error
says which field was probably meant (``unknown field 'gama'; did you mean 'gamma'? StepLR
takes: step_size, gamma``). The field types bound integers to ±2**53 and numbers to finite.
"""

import difflib
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

Number = Annotated[float, Field(allow_inf_nan=False)]
PerGroup = Number | list[Number]

MAX_INT = 2**53
"""Largest integer magnitude a spec accepts: exact in float64, far from int64 overflow."""


def in_range(value: int) -> int:
    """Return ``value``; raise ValueError when it lies outside ±2**53."""
    if not -MAX_INT <= value <= MAX_INT:
        raise ValueError(f"{value} is out of range: integers must lie within +-2**53 ({MAX_INT})")
    return value


def _all_in_range(values: list[int]) -> list[int]:
    if values and (min(values) < -MAX_INT or max(values) > MAX_INT):
        for value in values:
            in_range(value)
    return values


PosInt = Annotated[PositiveInt, AfterValidator(in_range)]
NonNegInt = Annotated[NonNegativeInt, AfterValidator(in_range)]
IntList = Annotated[list[int], AfterValidator(_all_in_range)]
NonNegIntList = Annotated[list[NonNegativeInt], AfterValidator(_all_in_range)]


def did_you_mean(given: str, names: Iterable[str]) -> str:
    """Return ``"did you mean 'x'? "`` for the name closest to ``given``, or ``""``."""
    close = difflib.get_close_matches(given, list(names), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def check_tag(value: Any, field: str, names: list[str], what: str) -> Any:
    """Return ``value[field]`` when ``value`` is an object naming one of ``names`` there; raise
    a pydantic error saying what to add (``add `type`: one of ...``) or what was probably
    meant (``unknown scheduler type 'Steplr'; did you mean 'StepLR'? ...``) otherwise."""
    if not isinstance(value, dict):
        raise PydanticCustomError(
            "object_type", f"a {what} is an object with `{field}`: one of {', '.join(names)}"
        )
    if field not in value:
        raise PydanticCustomError(f"missing_{field}", f"add `{field}`: one of {', '.join(names)}")
    given = value[field]
    if given in names:
        return given
    hint = did_you_mean(given, names) if isinstance(given, str) else ""
    error = PydanticCustomError(
        f"unknown_{field}", f"unknown {what} {field} {given!r}; {hint}one of {', '.join(names)}"
    )
    raise ValidationError.from_exception_data(
        what, [{"type": error, "loc": (field,), "input": given}]
    )


def as_line_error(err: Any, message: str | None = None) -> InitErrorDetails:
    """Return a pydantic error (from ``ValidationError.errors()``) ready to raise again, with
    its type and location kept and ``message`` (default: its own) as the text."""
    return {
        "type": PydanticCustomError(err["type"], message or err["msg"]),
        "loc": tuple(err["loc"]),
        "input": err.get("input"),
    }


class SpecModel(BaseModel):
    """Base of every request model: unknown fields and non-finite numbers are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="wrap")
    @classmethod
    def _name_unknown_fields(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except ValidationError as exc:
            errors = exc.errors()
            if not any(_own_unknown(err) for err in errors):
                raise
            names = [n for n in cls.model_fields if n != "type"]
            kind = cls.model_fields["type"].default if "type" in cls.model_fields else None
            owner = kind if isinstance(kind, str) else cls.__name__
            fixed = [
                as_line_error(
                    err,
                    f"unknown field {err['loc'][0]!r}; {did_you_mean(str(err['loc'][0]), names)}"
                    f"{owner} takes: {', '.join(names)}",
                )
                if _own_unknown(err)
                else as_line_error(err)
                for err in errors
            ]
            raise ValidationError.from_exception_data(exc.title, fixed) from None


def _own_unknown(err: Any) -> bool:
    return err["type"] == "extra_forbidden" and len(err["loc"]) == 1
