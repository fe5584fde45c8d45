"""The catalog: every scheduler type with its JSON Schema, torch's defaults and an example."""

import functools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.schedules import specs
from service.schedules.families import hooks as families


class CatalogEntry(BaseModel):
    type: str = Field(description="The torch class name, the spec's `type`.")
    name: str | None = Field(
        default=None,
        description="A family's own selector (transformers' `name`); null for torch's types.",
    )
    torch_class: str = Field(description="Where the class (or a family's function) lives.")
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


def _example_request(kind: str, example: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"scheduler": example, "steps": 200}
    if kind == "ReduceLROnPlateau":
        body["steps"] = 10
        body["metrics"] = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.85, 0.85, 0.85]
    if kind == "OneCycleLR":
        body["steps"] = 1000
        body["include"] = ["momentum"]
        body["sample"] = {"points": 21}
    if kind == "CyclicLR":
        body["include"] = ["momentum"]
    if kind == "MultiStepLR":
        body["steps"] = 400
    return body


@functools.cache
def catalog() -> Catalog:
    """Return the catalog; built once, since it depends only on the code."""
    entries = []
    for kind, cls in specs.SCHEDULER_TYPES.items():
        if kind in families.FAMILY_TYPES:
            continue  # one entry per family schedule, below
        schema = cls.model_json_schema()
        doc = (cls.__doc__ or "").strip().splitlines()
        defaults = {
            name: field.default
            for name, field in cls.model_fields.items()
            if name != "type" and not field.is_required()
        }
        required = [n for n, f in cls.model_fields.items() if f.is_required()]
        home = "torch.optim.swa_utils" if kind == "SWALR" else "torch.optim.lr_scheduler"
        entries.append(
            CatalogEntry(
                type=kind,
                torch_class=f"{home}.{kind}",
                description=doc[0] if doc else kind,
                parameters=schema,
                defaults=defaults,
                required=required,
                example=_example_request(kind, cls.examples[0]),
            )
        )
    entries += [CatalogEntry(**entry) for entry in families.catalog_entries()]
    return Catalog(
        schedulers=entries,
        optimizers=sorted(specs.optimizer_classes()),
        warmups=[WarmupEntry(**entry) for entry in families.warmup_entries()],
    )
