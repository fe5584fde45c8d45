"""Schedules from other libraries, one module per library ("family").

A family spec is ``{"type": "<family>", <the library's own selector>, ...its own argument
names}``: ``{"type": "timm", "sched": "cosine", ...}`` is timm's ``create_scheduler_v2``,
``{"type": "optax", "schedule": "warmup_cosine_decay_schedule", ...}`` is that optax
function, ``{"type": "megatron", "lr_decay_style": "WSD", ...}`` is Megatron-core's
``OptimizerParamScheduler``. :mod:`.library` holds what the families share.
"""
