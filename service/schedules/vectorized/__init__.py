"""The vectorized engine: every scheduler as a pure function of the step, on tensors.

- :mod:`.formulas`: one closed form per scheduler type (a ``Leaf``), torch's formulas.
- :mod:`.composition`: ``SequentialLR`` and ``ChainedScheduler`` as data over those.
- :mod:`.compile`: a request's real torch objects, read at step 0, as a ``Program``; ``run``.
- :mod:`.evaluation`: a program at any steps, by one path (closed form or affine scan).
- :mod:`.batch`: programs of one structure stacked and evaluated once (``run_many``).
"""
