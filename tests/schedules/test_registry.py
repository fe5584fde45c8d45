"""The registry: a scheduler joins by its spec class alone, and every view of it follows."""

from typing import Literal

import torch
from pydantic import Field
from torch.optim import lr_scheduler

from service.main import create_app
from service.schedules import catalog, registry, specs
from service.schedules.registry import SchedulerBase
from service.schedules.vectorized import formulas


def test_a_scheduler_class_alone_reaches_the_union_the_catalog_and_openapi(client, settings):
    @registry.register
    class HalvingLR(SchedulerBase):
        """Halves each group's lr at every step (ExponentialLR with gamma 0.5)."""

        type: Literal["HalvingLR"] = "HalvingLR"
        gamma: float = Field(default=0.5, description="Factor per step.")
        torch_class = lr_scheduler.ExponentialLR
        examples = [{"type": "HalvingLR"}]

        def closed_form(self, sched, device: torch.device) -> formulas.Leaf:
            return formulas.Exponential.of(sched, device)

    try:
        request = specs.ScheduleRequest.model_validate(
            {"scheduler": {"type": "HalvingLR"}, "steps": 3}
        )
        assert isinstance(request.scheduler, HalvingLR)
        nested = {"type": "SequentialLR", "schedulers": [{"type": "HalvingLR"}], "milestones": []}
        assert specs.ScheduleRequest.model_validate({"scheduler": nested, "steps": 3})

        entries = {e.type: e for e in catalog.catalog().schedulers}
        assert entries["HalvingLR"].example == {"scheduler": {"type": "HalvingLR"}, "steps": 200}
        assert entries["HalvingLR"].torch_class == "torch.optim.lr_scheduler.ExponentialLR"

        app = create_app(settings)
        schemas = app.openapi()["components"]["schemas"]
        assert schemas["HalvingLR"]["examples"] == [{"type": "HalvingLR"}]
        union = schemas["ScheduleRequest"]["properties"]["scheduler"]["oneOf"]
        assert {"$ref": "#/components/schemas/HalvingLR"} in union

        for engine in ("torch", "vectorized"):  # an app built before the class takes it too
            body = {"scheduler": {"type": "HalvingLR"}, "steps": 3, "engine": engine}
            r = client.post("/v1/schedules/compute", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["lr"] == [[0.1, 0.05, 0.025]]
    finally:
        registry.unregister(HalvingLR)
    assert "HalvingLR" not in registry.types()
