"""The vectorized engine: every scheduler as a pure function of the step, on tensors.

- :mod:`.formulas`: one closed form per scheduler type (a ``Leaf``), torch's formulas.
- :mod:`.composition`: ``SequentialLR`` and ``ChainedScheduler`` as data over those.
- :mod:`.compile`: a request's real torch objects, read at step 0, as a :class:`Program`.
- :mod:`.evaluation`: a program at any steps, by one path (closed form or affine scan).
- :mod:`.batch`: programs of one structure stacked and evaluated once.
"""

import numpy as np
import torch

from service.schedules import specs
from service.schedules.result import Computed
from service.schedules.vectorized.batch import run_many
from service.schedules.vectorized.compile import Unsupported, compile_request, unsupported_reason
from service.schedules.vectorized.evaluation import Program

__all__ = ["Program", "Unsupported", "compile_request", "run", "run_many", "unsupported_reason"]


def run(
    request: specs.ScheduleRequest, steps: np.ndarray, n: int, device: torch.device
) -> Computed:
    """Return lr (and momentum when asked) per group at scheduler ``steps`` of ``0..n-1``.

    ``request`` must already have batch scaling applied. Raises InvalidSpec exactly where
    the torch engine does (construction, a refused step, a non-finite lr).
    """
    program = compile_request(request, n, device)
    return program.result(torch.as_tensor(steps, dtype=torch.int64).to(device))
