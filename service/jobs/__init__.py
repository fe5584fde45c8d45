"""Training jobs: the seed's sine-regression MLP trained asynchronously with a schedule spec.

``specs`` (the request and response models), ``trainer`` (the torch loop), ``store`` (job
records through SQLAlchemy), ``executor`` (where jobs run: spawned worker processes),
``runner`` (one job from claim to result, inside a worker), ``artifacts`` (per-job files and
the ``latest`` link), ``service`` (submit, cancel, delete, list), ``events`` (Server-Sent
Events) and ``router`` (HTTP only).
"""
