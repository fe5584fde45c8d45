"""The registry of schedulers: every ``scheduler`` type the service accepts, and what each needs.

A scheduler is one spec class: a :class:`SchedulerBase` subclass with a ``type`` literal,
torch's argument names as fields and a torch-style docstring, joined with ``@register``. The
class declares everything the rest of the service needs:

- ``build(optimizer, span)``: the real torch scheduler (by default ``torch_class(optimizer,
  **fields)``; a family may return its own library's scheduler or a ``LambdaLR`` over its
  function), and ``build_closed`` the one the vectorized engine reads (default: the same);
- ``closed_form(sched, device)``: its :mod:`~service.schedules.vectorized.formulas` leaf,
  read from the built torch object (``None``: the torch engine only; say why in
  ``vectorized_unsupported``);
- ``lr_fields``: the lr-valued fields that ``batch_scaling`` multiplies;
- ``examples`` (the first is the catalog's; all reach the OpenAPI schema) and
  ``example_request`` (the rest of the catalog's example request);
- ``caveats(span)`` (and ``request_caveats(request)``): warnings for legal but surprising
  values (in this request).

From the registry come the ``scheduler`` field of every request (validated by ``type``, with
"did you mean" for a misspelling), its OpenAPI schema, the catalog, batch scaling, which specs
the vectorized engine takes, and the tests' coverage guards.

A family (another library's schedules: ``{"type": "transformers", "name": "cosine", ...}``) is
one module in :mod:`service.schedules.families`: spec classes sharing one ``type`` literal and
naming their own selector field (``selector = "name"``, each class with its own ``name``
literal). Every module there is imported at start-up; nothing else needs to change.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, Discriminator, Field, GetCoreSchemaHandler, Tag
from pydantic_core import core_schema

from service.schedules.base import SpecModel, check_tag

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler

    from service.schedules.specs import ScheduleRequest
    from service.schedules.vectorized.formulas import Leaf


class SchedulerBase(SpecModel):
    """Base of every scheduler spec (see the module docstring for what a subclass declares)."""

    torch_class: ClassVar[type | None] = None
    """The torch class ``build`` instantiates by default."""
    source: ClassVar[str | None] = None
    """Where the schedule comes from, for the catalog (default: ``torch_class``'s path)."""
    selector: ClassVar[str | None] = None
    """For a family sharing one ``type``: the field whose literal picks the class."""
    lr_fields: ClassVar[tuple[str, ...]] = ()
    """Fields holding learning rates (scaled by ``batch_scaling``)."""
    examples: ClassVar[list[dict[str, Any]]] = []
    """Example specs for the catalog and the OpenAPI page (the first is the main one)."""
    example_request: ClassVar[dict[str, Any]] = {}
    """The catalog example's other request fields (``steps`` is 200 unless given here)."""
    metric_driven: ClassVar[bool] = False
    """Driven by the request's metrics (a plateau schedule; a family may say so per spec)."""
    dense_check: ClassVar[bool] = False
    """Its vectorized evaluation checks every step (the cost model counts every one)."""
    reads_lr_scale: ClassVar[bool] = False
    """It reads its group's lr scale (timm's schedulers)."""
    # (declared here, so that the many ``getattr(spec, name, default)`` on the hot path find
    # them on the class: on a pydantic model a missing attribute costs ~2 us, an exception)
    cost_per_step: ClassVar[float] = 12.0
    """The vectorized cost model's weight (about 1 ns of CPU each: ``bench/bench_cost.py``
    measures them) per scheduler step of this closed form, whatever the param groups (what
    the groups share: a factor of the step, a transcendental of it)."""
    cost_per_value: ClassVar[float] = 8.0
    """The weight per value (scheduler step × param group). The defaults are torch's
    CosineAnnealingLR's (11 + 8 × groups ns per step measured); a family sets its own."""

    def vectorized_cost(self, steps: int, groups: int) -> float:
        """Return the cost model's weight (about 1 ns of CPU each) of evaluating this
        scheduler's closed form over ``steps`` scheduler steps × ``groups`` param groups on
        the vectorized engine (a composite's own: its children are counted themselves)."""
        if self.children():
            return 0.0
        return steps * (self.cost_per_step + groups * self.cost_per_value)

    def children(self) -> list["SchedulerBase"]:
        """Return the nested scheduler specs (empty for a leaf scheduler)."""
        return []

    def child_spans(self, span: int) -> list[int]:
        """Return how many scheduler steps of the ``span`` this one covers each child runs."""
        return [span] * len(self.children())

    def build(self, optimizer: torch.optim.Optimizer, span: int) -> "LRScheduler":
        """Return the torch scheduler on ``optimizer``; ``span`` is how many scheduler steps it
        will cover (for defaults that depend on the length, as OneCycleLR's)."""
        if self.torch_class is None:  # pragma: no cover - a registration error
            raise NotImplementedError(f"{type(self).__name__} declares no torch_class or build")
        return self.torch_class(optimizer, **self.torch_kwargs())

    def build_closed(self, optimizer: torch.optim.Optimizer, span: int) -> "LRScheduler":
        """Return the torch scheduler the vectorized engine reads (its ``closed_form`` gets
        this object): for another library's schedule, one over its closed form (a
        ``LambdaLR``) rather than the library's own; by default, :meth:`build`'s."""
        return self.build(optimizer, span)

    def torch_kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments of ``torch_class`` (every field but the selectors)."""
        return self.model_dump(exclude={"type", *([self.selector] if self.selector else [])})

    def compose(
        self, optimizer: torch.optim.Optimizer, children: list["LRScheduler"]
    ) -> "LRScheduler":
        """Return the torch scheduler over the built ``children`` (composites only)."""
        raise NotImplementedError  # pragma: no cover - only composites have children

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> "Leaf | None":
        """Return this scheduler's vectorized leaf, read from the built ``sched``; None when
        only the torch engine computes it."""
        return None

    def vectorized_unsupported(self) -> str | None:
        """Return why the vectorized engine cannot compute this spec, or None."""
        if type(self).closed_form is SchedulerBase.closed_form and not self.children():
            kind = type(self).model_fields["type"].default
            return f"{kind} has no closed form; use engine 'torch' or 'auto'"
        return None

    def caveats(self, span: int) -> list[str]:
        """Return warnings for this spec's values over the ``span`` scheduler steps it runs."""
        return []

    def request_caveats(self, request: "ScheduleRequest") -> list[str]:
        """Return warnings for this spec in ``request`` (its optimizer, interval, ...)."""
        return []


_CLASSES: dict[str, dict[str | None, type[SchedulerBase]]] = {}
"""Every registered class, by ``type`` and then by selector value (None without one)."""
_USERS: list[type[BaseModel]] = []
"""Models with a scheduler field, rebuilt when the registry changes."""
_complete = False

S = TypeVar("S", bound=type[SchedulerBase])


def _literal(cls: type[BaseModel], name: str) -> str:
    field = cls.model_fields.get(name)
    if field is None or not isinstance(field.default, str):
        raise TypeError(f"{cls.__name__} needs a {name!r} Literal field with its value as default")
    return field.default


def register(cls: S) -> S:
    """Add ``cls`` to the registry (a class decorator); return it unchanged."""
    kind = _literal(cls, "type")
    key = _literal(cls, cls.selector) if cls.selector else None
    _CLASSES.setdefault(kind, {})[key] = cls
    if cls.examples:
        cls.model_config["json_schema_extra"] = {"examples": cls.examples}
        cls.model_rebuild(force=True)
    if _complete:
        complete()
    return cls


def unregister(cls: type[SchedulerBase]) -> None:
    """Remove ``cls`` (tests that register a throwaway scheduler)."""
    kind = _literal(cls, "type")
    family = _CLASSES.get(kind, {})
    family.pop(_literal(cls, cls.selector) if cls.selector else None, None)
    if not family:
        _CLASSES.pop(kind, None)
    if _complete:
        complete()


def classes() -> list[type[SchedulerBase]]:
    """Return every registered scheduler class, in registration order."""
    return [cls for family in _CLASSES.values() for cls in family.values()]


def types(family: str | None = None) -> list[str]:
    """Return every scheduler ``type`` a request can name (only those of the module
    ``service.schedules.families.<family>`` when given)."""
    if family is None:
        return list(_CLASSES)
    module = f"service.schedules.families.{family}"
    return [k for k, f in _CLASSES.items() if any(c.__module__ == module for c in f.values())]


def uses_schedulers(model: type[BaseModel]) -> type[BaseModel]:
    """Mark ``model`` (and its subclasses) as holding a scheduler field (a class decorator)."""
    _USERS.append(model)
    return model


def complete() -> None:
    """Rebuild every model with a scheduler field over the classes registered now.

    Composites (schedulers holding schedulers) embed each other's schemas, so they are rebuilt
    until each has seen the others' new ones; then every other model and its subclasses.
    """
    global _complete
    _complete = True
    composites = [m for m in _USERS if issubclass(m, SchedulerBase)]
    for _ in range(len(composites)):
        for model in composites:
            model.model_rebuild(force=True)
    done: set[type[BaseModel]] = set(composites)

    def rebuild(model: type[BaseModel]) -> None:
        if model not in done:
            done.add(model)
            model.model_rebuild(force=True)
        for sub in model.__subclasses__():
            rebuild(sub)

    for model in _USERS:
        rebuild(model)


def choose(value: Any) -> type[SchedulerBase]:
    """Return the class a raw scheduler object names; raise a pydantic error saying what to
    add or change when it names none."""
    family = _CLASSES[check_tag(value, "type", types(), "scheduler")]
    if None in family:
        return family[None]
    selector = next(iter(family.values())).selector
    assert selector is not None
    kind = value["type"]
    return family[check_tag(value, selector, [str(k) for k in family], kind)]


def _validate(value: Any, handler: Callable[[Any], Any]) -> SchedulerBase:
    if isinstance(value, SchedulerBase):
        return value
    return choose(value).model_validate(value)


def _union() -> Any:
    """Return the registered classes as one pydantic (nested) discriminated union.

    The outer discriminator is a function of ``type`` with one tag per family: a ``type``
    mapping whose entries are themselves unions (a family's classes, by its selector) is not
    valid OpenAPI, while a tagged union is (``oneOf`` without a mapping).
    """
    arms: list[Any] = []
    for kind, family in _CLASSES.items():
        members = list(family.values())
        if len(members) == 1 or None in family:
            arm = members[0]
        else:
            arm = Annotated[tuple_union(members), Field(discriminator=members[0].selector)]
        arms.append(Annotated[arm, Tag(kind)])
    if not arms:
        return SchedulerBase
    if len(arms) == 1:
        return arms[0]
    return Annotated[tuple_union(arms), Discriminator(_type_of)]


def _type_of(value: Any) -> Any:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


def tuple_union(members: list[Any]) -> Any:
    """Return ``Union[members...]``."""
    union = members[0]
    for member in members[1:]:
        union = union | member
    return union


class _SchedulerField:
    """Validates by the registry at call time (messages of our own); the JSON schema and
    serialization are those of the union of the classes registered when the model was built."""

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_wrap_validator_function(
            _validate, handler.generate_schema(_union())
        )


SchedulerSpec = Annotated[Any, _SchedulerField]
"""A field holding any registered scheduler (a :class:`SchedulerBase`), chosen by its ``type``
(and selector). Typed ``Any`` for FastAPI, which publishes an unused schema of a model type."""
