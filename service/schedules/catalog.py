"""The catalog: every registered scheduler with its JSON Schema, defaults and an example."""

import functools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.schedules import registry, specs
from service.schedules.families import hooks as families


class CatalogEntry(BaseModel):
    type: str = Field(description="The spec's `type`: the torch class name, or the family.")
    name: str | None = Field(
        default=None,
        description="A family's own selector value (transformers' `name`, optax's "
        "`schedule`); null for torch's types.",
    )
    torch_class: str = Field(description="Where the schedule lives (torch's class path).")
    description: str = Field(description="What the schedule does, in one line.")
    parameters: dict[str, Any] = Field(description="JSON Schema of the scheduler spec.")
    defaults: dict[str, Any] = Field(description="torch's default for each optional parameter.")
    required: list[str] = Field(description="Parameters without a default.")
    example: dict[str, Any] = Field(description="A ready request for POST /v1/schedules/compute.")


class WarmupEntry(BaseModel):
    type: str = Field(description="The warmup's `type`.")
    library: str | None = Field(description="The library it reproduces; null: the service's own.")
    description: str = Field(description="What the warmup does, in one line.")
    parameters: dict[str, Any] = Field(description="JSON Schema of the warmup spec.")
    example: dict[str, Any] = Field(description="A ready request for POST /v1/schedules/compute.")


class Catalog(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "schedulers": [
                        {
                            "type": "StepLR",
                            "torch_class": "torch.optim.lr_scheduler.StepLR",
                            "description": "Decays each group's lr by ``gamma`` every "
                            "``step_size`` steps.",
                            "parameters": {"type": "object", "properties": {}},
                            "defaults": {"gamma": 0.1},
                            "required": ["step_size"],
                            "example": {
                                "scheduler": {"type": "StepLR", "step_size": 30, "gamma": 0.65},
                                "steps": 200,
                            },
                        }
                    ],
                    "optimizers": ["Adam", "AdamW", "SGD"],
                }
            ]
        }
    )

    schedulers: list[CatalogEntry]
    optimizers: list[str] = Field(description="torch.optim optimizer classes accepted.")
    warmups: list[WarmupEntry] = Field(
        default_factory=list, description="Every `warmup.type`, the service's and pytorch_warmup's."
    )


def _entry(cls: type[specs.SchedulerBase]) -> CatalogEntry:
    schema = cls.model_json_schema()
    doc = (cls.__doc__ or "").strip().splitlines()
    kind = cls.model_fields["type"].default
    fixed = {"type", *([cls.selector] if cls.selector else [])}
    defaults = {
        name: field.default
        for name, field in cls.model_fields.items()
        if name not in fixed and not field.is_required()
    }
    required = [n for n, f in cls.model_fields.items() if f.is_required()]
    torch_class = cls.torch_class
    source = cls.source or (
        f"{torch_class.__module__}.{torch_class.__qualname__}" if torch_class else kind
    )
    return CatalogEntry(
        type=kind,
        name=cls.model_fields[cls.selector].default if cls.selector else None,
        torch_class=source,
        description=doc[0] if doc else kind,
        parameters=schema,
        defaults=defaults,
        required=required,
        example={"scheduler": cls.examples[0], "steps": 200, **cls.example_request},
    )


def catalog() -> Catalog:
    """Return the catalog of every registered scheduler (built once per registry state)."""
    return _catalog(tuple(registry.classes()))


@functools.cache
def _catalog(classes: tuple[type[specs.SchedulerBase], ...]) -> Catalog:
    entries = [
        _entry(cls)
        for cls in classes
        if cls.model_fields["type"].default not in families.FAMILY_TYPES
    ]
    # transformers: one entry per name; Noam and REX with their own example optimizer
    entries += [CatalogEntry(**entry) for entry in families.catalog_entries()]
    return Catalog(
        schedulers=entries,
        optimizers=sorted(specs.optimizer_classes()),
        warmups=[WarmupEntry(**entry) for entry in families.warmup_entries()],
    )
