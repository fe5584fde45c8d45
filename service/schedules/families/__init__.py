"""Schedules from other libraries: one module per library (a "family").

A family spec goes in the request's ``scheduler`` field as ``{"type": "<family>", <the
library's own selector>, ...its own argument names}``, e.g. ``{"type": "transformers",
"name": "cosine", "num_warmup_steps": 100, "num_training_steps": 1000}``. Each family module
holds, for its library:

- the spec models (pydantic; the library's names and defaults),
- the closed forms: pure functions of a float64 tensor of step counts, one row per param
  group, which the vectorized engine evaluates (no import of the library),
- the torch builder: the real library, imported lazily, which the torch engine steps.

:mod:`.common` has what every family shares (which library and release a family reproduces,
"did you mean" for names, the factor type the vectorized engine evaluates).
"""

# The family modules build on the spec base classes; importing the specs first lets a family
# module be imported on its own (the specs import every family to form their unions).
import service.schedules.specs  # noqa: F401
