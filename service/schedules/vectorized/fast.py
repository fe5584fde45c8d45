"""The fast path: a verified closed form evaluated with few temporaries, in chunks, threaded.

:class:`~service.schedules.vectorized.evaluation.Program` evaluates any schedule generically
(tensor per node, probes each call). For the closed forms most requests use (a scheduler
alone or a ``SequentialLR`` of the warmup and the main schedule, of the leaves below), a
:class:`Kernel` computes the same float64 operations in the same order, elementwise, so it
gives the generic path's bits:

- IEEE ``+ - * /`` are correctly rounded, so numpy's and torch's agree bit for bit; numpy's
  cost less per call on small arrays;
- the one transcendental (``cos``) is torch's, applied in place to the numpy buffer (torch's
  CPU ``cos`` gives each element the same bits wherever it sits in a tensor, which
  ``tests/schedules/vectorized/test_fast.py`` checks);
- dense steps (``0..n-1``, the unsampled case) are generated per chunk as float64 (exact
  integers), so no int64 step tensor is converted; long schedules are computed a cache-sized
  chunk at a time (the temporaries stay in the CPU cache) and, past :data:`THREADS_MIN`
  values, in two threads at once (numpy and torch release the GIL while they compute).

A program the kernel does not cover (other leaves, momentum-cycling schedulers, lambdas of
user expressions, a restarted anchor) keeps the generic path; so does any result that is not
finite everywhere (the generic path then decides, by torch's recursion, what to answer).
"""

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from threading import Lock

import numpy as np
import torch

from service.schedules import budget
from service.schedules.vectorized.composition import Sequential
from service.schedules.vectorized.evaluation import Program, _all_finite
from service.schedules.vectorized.formulas import Cosine, Lambda, Leaf, Linear

CHUNK = 1 << 15
"""Values per chunk (256 KB of float64 per temporary: the few a chunk uses stay in L2;
measured on 1M steps, 2 threads: 16k values 4.2 ms, 32k 3.7 ms, 64k 3.75 ms)."""
THREADS_MIN = 1 << 18
"""Dense schedules of at least this many values per group are split across threads."""
THREADS = max(1, min(2, os.cpu_count() or 1))

_STEPS = np.arange(CHUNK, dtype=np.float64)
_STEPS.flags.writeable = False
_INT_STEPS = np.arange(CHUNK, dtype=np.int64)
_INT_STEPS.flags.writeable = False


def _local_steps(first: int, size: int) -> np.ndarray:
    """Return ``first, first + 1, ..., first + size - 1`` as float64 (exact integers)."""
    if size <= _STEPS.size:
        steps = _STEPS[:size]
        return steps if first == 0 else steps + first
    return np.arange(first, first + size, dtype=np.float64)


_pool: ThreadPoolExecutor | None = None
_pool_lock = Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="lr-kernel")
        return _pool


def _cos_(values: np.ndarray) -> None:
    torch.from_numpy(values).cos_()


Fill = Callable[[np.ndarray, np.ndarray, np.ndarray], None]
"""``fill(e, out, tmp)``: write the lr at local float64 steps ``e`` into ``out`` (groups,
len(e)); ``tmp`` is scratch of len(e)."""


def _halving_is_exact(values: list[float]) -> bool:
    """Return True when ``(c * h) / 2 == (c * 0.5) * h`` bit for bit for every ``c`` here and
    every ``h`` in [0, 2]: scaling by a power of two commutes with rounding unless a result
    is subnormal, which no ``|c| >= 1e-200`` (or ``c == 0``) makes with ``h >= 1e-17`` (the
    least nonzero ``1 + cos``)."""
    return all(c == 0.0 or 1e-200 <= abs(c) <= 1e300 for c in values)


def _cosine(leaf: Cosine, start: list[float]) -> Fill:
    # Cosine._half, then Cosine._from: ((start - eta) * (1 + cos(pi * e / T_max))) / 2 + eta
    eta, t_max = leaf.eta_min, leaf.T_max
    scale = [s - eta for s in start]
    halved = _halving_is_exact(scale)
    half_scale = [c * 0.5 for c in scale]
    # x + 0.0 is x except for x = -0.0; (c * h) / 2 is never -0.0 when c is not negative
    # (h = 1 + cos(...) is never negative)
    add_eta = not (eta == 0.0 and all(math.copysign(1.0, c) > 0 for c in scale))

    def fill(e: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> None:
        np.multiply(e, math.pi, out=tmp)
        np.divide(tmp, t_max, out=tmp)
        _cos_(tmp)
        np.add(tmp, 1, out=tmp)
        for i, row in enumerate(out):
            if halved:
                np.multiply(half_scale[i], tmp, out=row)
            else:
                np.multiply(scale[i], tmp, out=row)
                np.divide(row, 2, out=row)
            if add_eta:
                np.add(row, eta, out=row)

    return fill


def _linear_from_zero(leaf: Lambda, base: list[float], steps: list[int]) -> Fill:
    # Lambda.closed with LinearFromZero: base * (e / steps)
    def fill(e: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> None:
        done = None
        for row, b, s in zip(out, base, steps, strict=True):
            if done != s:
                np.divide(e, s, out=tmp)
                done = s
            np.multiply(b, tmp, out=row)

    return fill


def _linear(leaf: Linear, start: list[float]) -> Fill:
    # Linear.closed: start * (s + (end - s) * min(e, t) / t); start * s when t == 0
    s, t, slope = leaf.start_factor, leaf.total_iters, leaf.end_factor - leaf.start_factor

    def fill(e: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> None:
        if t == 0:
            for row, b in zip(out, start, strict=True):
                row.fill(b * s)
            return
        np.minimum(e, t, out=tmp)
        np.multiply(slope, tmp, out=tmp)
        np.divide(tmp, t, out=tmp)
        np.add(s, tmp, out=tmp)
        for row, b in zip(out, start, strict=True):
            np.multiply(b, tmp, out=row)

    return fill


def _rows(values: torch.Tensor) -> list[float]:
    return [float(v) for v in values[:, 0].tolist()]


def _leaf_fill(leaf: Leaf, anchor: torch.Tensor, restarted: bool) -> Fill | None:
    """Return the kernel of ``leaf.closed(e, anchor, restarted)``, or None when not covered."""
    kind = type(leaf)
    base = _rows(leaf.base)
    if kind is Cosine:
        if restarted or bool(torch.equal(anchor, leaf.base)):
            return _cosine(leaf, base)
        return None
    if kind is Linear:
        return _linear(leaf, base if restarted else _rows(anchor))
    if kind is Lambda and not leaf.lambda_field and leaf.fn_keys is not None:
        steps = list(leaf.fn_keys)
        if len(steps) == leaf.groups and all(
            isinstance(k, tuple) and len(k) == 2 and k[0] == "linear_from_zero" for k in steps
        ):
            return _linear_from_zero(leaf, base, [int(k[1]) for k in steps])
    return None


@dataclass
class _Piece:
    start: int
    """The first global scheduler step of the segment."""
    end: int
    """One past its last global step (clipped to n)."""
    fill: Fill


@dataclass
class Kernel:
    """A program's closed form as a few fused loops (see the module doc)."""

    pieces: list[_Piece]
    groups: int
    n: int
    lr0: list[float]
    momentum0: list[float] | None

    def evaluate(
        self, k: np.ndarray | None, steps: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """Return lr and momentum (groups, len(k)) at sorted scheduler steps ``k``, and
        whether every lr is finite. ``k`` None: every step ``0..n-1``, and ``steps`` (when
        given, int64 of n) is filled with them too."""
        size = self.n if k is None else k.size
        lr = np.empty((self.groups, size), dtype=np.float64)
        if k is None:
            finite = self._dense(lr, steps)
            zeros = 1 if size else 0
        else:
            self._sparse(k, lr)
            finite = math.isfinite(float(lr.sum()))
            zeros = int(np.searchsorted(k, 1))
        if zeros:
            lr[:, :zeros] = self._lr0
        mom = None
        if self.momentum0 is not None:
            mom = np.empty_like(lr)
            for row, m in zip(mom, self.momentum0, strict=True):
                row.fill(m)
        return lr, mom, finite

    def __post_init__(self) -> None:
        self._lr0 = np.asarray(self.lr0, dtype=np.float64)[:, None]
        spans = [(p, p.start, min(p.end, self.n)) for p in self.pieces]
        self._spans = [(p, lo, hi) for p, lo, hi in spans if lo < hi]

    def _sparse(self, k: np.ndarray, lr: np.ndarray) -> None:
        starts = [p.start for p in self.pieces]
        bounds = [*np.searchsorted(k, starts).tolist(), k.size]
        for i, piece in enumerate(self.pieces):
            lo, hi = bounds[i], bounds[i + 1]
            if lo >= hi:
                continue
            e = (k[lo:hi] - piece.start).astype(np.float64)
            piece.fill(e, lr[:, lo:hi], np.empty(hi - lo))

    def _dense(self, lr: np.ndarray, steps: np.ndarray | None) -> bool:
        if self.n < THREADS_MIN or THREADS == 1:
            return self._dense_range(lr, steps, 0, self.n)
        budget.check()
        cut = (self.n // THREADS // CHUNK + 1) * CHUNK
        parts = [(i * cut, min(self.n, (i + 1) * cut)) for i in range(THREADS)]
        pool = _executor()
        futures = [pool.submit(self._dense_range, lr, steps, lo, hi) for lo, hi in parts if lo < hi]
        finite = all([future.result() for future in futures])
        budget.check()
        return finite

    def _dense_range(self, lr: np.ndarray, steps: np.ndarray | None, lo: int, hi: int) -> bool:
        """Fill columns [lo, hi) of ``lr`` (and ``steps``) a chunk at a time; return whether
        they are all finite (a sum per chunk, while the chunk is in cache)."""
        tmp = np.empty(min(CHUNK, max(1, hi - lo)))
        finite = True
        for piece, start, end in self._spans:
            a, b = max(start, lo), min(end, hi)
            for c in range(a, b, CHUNK):
                d = min(b, c + CHUNK)
                e = _local_steps(c - piece.start, d - c)
                out = lr[:, c:d]
                piece.fill(e, out, tmp[: d - c])
                finite = finite and math.isfinite(float(out.sum()))
                if steps is not None:
                    if d - c <= _INT_STEPS.size:
                        np.add(_INT_STEPS[: d - c], c, out=steps[c:d])
                    else:
                        steps[c:d] = np.arange(c, d, dtype=np.int64)
        return finite


def kernel_of(program: Program) -> Kernel | None:
    """Return the kernel of ``program``'s closed form, or None when it is not covered."""
    root, n, anchor = program.root, program.n, program.anchor
    if anchor.device.type != "cpu" or program.dampen is not None:
        return None
    pieces: list[_Piece] = []
    if isinstance(root, Leaf):
        fill = _leaf_fill(root, anchor, False)
        if fill is None:
            return None
        pieces.append(_Piece(0, n, fill))
    elif isinstance(root, Sequential):
        for i, seg in enumerate(root.segments):
            if seg.restarted and seg.leaf.relative:
                return None
            fill = _leaf_fill(seg.leaf, anchor, seg.restarted)
            if fill is None:
                return None
            if i and seg.start != root.segments[i - 1].end:
                return None
            pieces.append(_Piece(seg.start, seg.end, fill))
        if not pieces or pieces[0].start != 0:
            return None
        pieces[-1].end = max(pieces[-1].end, n)
    else:
        return None
    return Kernel(
        pieces=pieces,
        groups=int(anchor.shape[0]),
        n=n,
        lr0=_rows(program.lr0),
        momentum0=None if program.momentum0 is None else _rows(program.momentum0),
    )


@dataclass
class Fast:
    """A program whose closed form the generic path would take (its probes passed), with its
    kernel and its final lr."""

    program: Program
    kernel: Kernel
    final: list[float]

    def evaluate(
        self, k: np.ndarray | None, steps: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, list[float]] | None:
        """Return lr, momentum and final lr at sorted ``k`` (None: ``0..n-1``, also written
        into ``steps`` when given), or None when the values are not all finite (the generic
        path decides those)."""
        budget.check()
        lr, mom, finite = self.kernel.evaluate(k, steps)
        if not (finite or bool(np.isfinite(lr).all())):
            return None
        return lr, mom, self.final


def fast_of(program: Program) -> Fast | None:
    """Return ``program``'s fast path, or None where the generic path must decide: a refused
    step, probes that fail (then torch's recursion gives the values), a dense check, or a
    closed form the kernel does not cover."""
    if program.dampen is not None or program.failure() is not None:
        return None
    probes, values = program.probed()
    if probes is None or values is None or probes.ranges:
        return None
    if not program._matches_lr0(values[:, 0]):
        return None
    checked = values[:, [probes.points.index(p) for p in probes.finite]]
    if not _all_finite(checked):
        return None
    kernel = kernel_of(program)
    if kernel is None:
        return None
    n = program.n
    final = program.lr0[:, 0] if n == 1 else values[:, probes.points.index(n - 1)]
    return Fast(program, kernel, [float(v) for v in final.reshape(-1).tolist()])
