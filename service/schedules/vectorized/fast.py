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
  integers), so no int64 step tensor is converted; a chunk is computed in place in its own
  columns of the output (a row's shared factor in the last row), so a chunk reads and
  writes two cache-sized buffers (the output's columns and the step ramp), allocating
  nothing; past :data:`THREADS_MIN` values the calling thread and a pooled one take the
  chunks one at a time (numpy and torch release the GIL while they compute);
- where the parameters bound every value (they are finite and far from float64's range,
  see :class:`Fill`), the output is not checked for infinities and nans.

A program the kernel does not cover (other leaves, momentum-cycling schedulers, lambdas of
user expressions, a restarted anchor) keeps the generic path; so does any result that is not
finite everywhere (the generic path then decides, by torch's recursion, what to answer).
"""

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from threading import Lock, local

import numpy as np
import torch

from service.schedules import budget
from service.schedules.vectorized.composition import Sequential
from service.schedules.vectorized.evaluation import Program, _all_finite, matches_lr0
from service.schedules.vectorized.formulas import Cosine, Lambda, Leaf, Linear

CHUNK = 1 << 15
"""Values per chunk (256 KB of float64 per buffer: the output chunk and the step ramp a
chunk reads stay in L2)."""
THREADS_MIN = 1 << 18
"""Dense schedules of at least this many values per group are split across threads."""
THREADS = max(1, min(2, os.cpu_count() or 1))
BOUND = 1e300
"""Magnitudes a kernel's parameters are checked against to know, before computing, that every
value it writes is finite (float64's largest is 1.8e308: the few operations of a closed form
cannot overflow from below this)."""

_STEPS = np.arange(CHUNK, dtype=np.float64)
_STEPS.flags.writeable = False
_INT_STEPS = np.arange(CHUNK, dtype=np.int64)
_INT_STEPS.flags.writeable = False


Steps = np.ndarray | int
"""Local float64 steps: an array of them, or (dense) the first of ``out``'s columns."""


def _dense_steps(first: int, out: np.ndarray) -> np.ndarray:
    """Return ``first, first + 1, ...`` (float64, exact integers) as long as ``out``: the
    shared ramp itself when ``first`` is 0, else written into ``out``."""
    size = out.shape[0]
    if size > _STEPS.size:
        out[:] = np.arange(first, first + size, dtype=np.float64)
        return out
    if first == 0:
        return _STEPS[:size]
    return np.add(_STEPS[:size], first, out=out)


def _steps_into(e: Steps, out: np.ndarray) -> np.ndarray:
    """Return the local steps ``e`` (an array, or a dense run's first step), as float64
    readable alongside ``out`` (written into it when it is a dense run's)."""
    if isinstance(e, int):
        return _dense_steps(e, out)
    return e


_pool: ThreadPoolExecutor | None = None
_pool_lock = Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="lr-kernel")
        return _pool


class _Scratch(local):
    """A thread's scratch buffer (never handed out: it only holds steps between operations)."""

    buffer: np.ndarray | None = None

    def get(self, size: int) -> np.ndarray:
        if self.buffer is None or self.buffer.size < size:
            self.buffer = np.empty(max(size, 1))
        return self.buffer[:size]


_scratch = _Scratch()


def _cos_(values: np.ndarray) -> None:
    torch.from_numpy(values).cos_()


FACTORS_MAX_BYTES = 8 << 20
"""Byte budget of the cached cosine factors (:class:`_Factors`): a hundred 10k-step rows."""
FACTORS_N_MAX = 1 << 17
"""Only kernels of at most this many steps cache their factors (a longer schedule's chunks
would push out every other one, for a saving small beside its own evaluation)."""


class _Factors:
    """``1 + cos(pi * e / T_max)`` (the cosine kernel's shared factor, its one transcendental)
    by ``T_max`` and the local steps ``e``, least recently used first out past a byte budget.

    Specs of an lr sweep (the common distinct requests) share their T_max and steps, so
    their factor is computed once; each spec then scales it by its own lr. A cached row is
    the array the same operations wrote (read-only), so the values are the same bits."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._cached: OrderedDict[tuple[object, ...], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = Lock()

    def get(self, key: tuple[object, ...]) -> np.ndarray | None:
        with self._lock:
            row = self._cached.get(key)
            if row is not None:
                self._cached.move_to_end(key)
            return row

    def put(self, key: tuple[object, ...], row: np.ndarray) -> None:
        row.flags.writeable = False
        with self._lock:
            if key in self._cached or row.nbytes > self.max_bytes // 4:
                return
            self._cached[key] = row
            self._bytes += row.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._cached.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._cached.clear()
            self._bytes = 0


_factors = _Factors(FACTORS_MAX_BYTES)


Write = Callable[[Steps, np.ndarray, np.ndarray], None]
"""``write(e, out, tmp)``: write the lr at local steps ``e`` into ``out`` (groups, columns),
its rows contiguous; ``tmp`` is scratch as long as a row."""


@dataclass(frozen=True)
class Fill:
    """A leaf's kernel."""

    write: Write
    finite: bool
    """Every value ``write`` gives at steps in [0, the kernel's n] is finite (known from the
    parameters: then the kernel does not check its output)."""


def _halving_is_exact(values: list[float]) -> bool:
    """Return True when ``(c * h) / 2 == (c * 0.5) * h`` bit for bit for every ``c`` here and
    every ``h`` in [0, 2]: scaling by a power of two commutes with rounding unless a result
    is subnormal, which no ``|c| >= 1e-200`` (or ``c == 0``) makes with ``h >= 1e-17`` (the
    least nonzero ``1 + cos``)."""
    return all(c == 0.0 or 1e-200 <= abs(c) <= 1e300 for c in values)


def _within(*values: float, bound: float = BOUND) -> bool:
    """Return True when every value (a float or an int) is at most ``bound`` in magnitude
    (False for nan and inf)."""
    return all(abs(v) <= bound for v in values)


def _cosine(leaf: Cosine, start: list[float], n: int) -> Fill:
    # Cosine._half, then Cosine._from: ((start - eta) * (1 + cos(pi * e / T_max))) / 2 + eta
    eta, t_max = leaf.eta_min, leaf.T_max
    scale = [s - eta for s in start]
    halved = _halving_is_exact(scale)
    half_scale = [c * 0.5 for c in scale]
    # x + 0.0 is x except for x = -0.0; (c * h) / 2 is never -0.0 when c is not negative
    # (h = 1 + cos(...) is never negative)
    add_eta = not (eta == 0.0 and all(math.copysign(1.0, c) > 0 for c in scale))
    # the argument is finite (|pi * e / T_max| <= 1e15), so cos is in [-1, 1] and h in
    # [0, 2]; |c * h| <= 2e300 and |eta| <= 1e300
    finite = _within(t_max, eta, *scale) and t_max != 0 and n * math.pi <= 1e15 * abs(t_max)

    # the factor's operands are finite (``finite``): T_max and the steps decide it alone
    cached = finite and n <= FACTORS_N_MAX

    def factor(e: Steps, h: np.ndarray) -> np.ndarray:
        np.multiply(_steps_into(e, h), math.pi, out=h)
        np.divide(h, t_max, out=h)
        _cos_(h)
        np.add(h, 1, out=h)
        return h

    def write(e: Steps, out: np.ndarray, tmp: np.ndarray) -> None:
        if cached:
            key = (t_max, e, out.shape[1]) if isinstance(e, int) else (t_max, e.tobytes())
            h = _factors.get(key)
            if h is None:
                h = factor(e, np.empty(out.shape[1]))
                _factors.put(key, h)
        else:
            h = factor(e, out[-1])  # 1 + cos(...), shared by the rows, in the last one
        for i, row in enumerate(out):  # the last row last: it may hold h until then
            if halved:
                np.multiply(half_scale[i], h, out=row)
            else:
                np.multiply(scale[i], h, out=row)
                np.divide(row, 2, out=row)
            if add_eta:
                np.add(row, eta, out=row)

    return Fill(write, finite)


def _linear_from_zero(leaf: Lambda, base: list[float], steps: list[int], n: int) -> Fill:
    # Lambda.closed with LinearFromZero: base * (e / steps); |e / s| <= n for integers s != 0
    finite = all(s != 0 for s in steps) and _within(*base, bound=BOUND / max(1, n))

    def write(e: Steps, out: np.ndarray, tmp: np.ndarray) -> None:
        x = _steps_into(e, tmp)
        for row, b, s in zip(out, base, steps, strict=True):
            np.divide(x, s, out=row)
            np.multiply(b, row, out=row)

    return Fill(write, finite)


def _linear(leaf: Linear, start: list[float]) -> Fill:
    # Linear.closed: start * (s + (end - s) * min(e, t) / t); start * s when t == 0
    s, t, slope = leaf.start_factor, leaf.total_iters, leaf.end_factor - leaf.start_factor
    if t == 0:
        finite = all(math.isfinite(b * s) for b in start)
    else:
        # e >= 0, so |min(e, t)| <= |t|: |slope * min(e, t)| <= 1e300 and, divided by t,
        # at most |slope| (rounded)
        finite = _within(t, s, slope, *start, bound=1e150)

    def write(e: Steps, out: np.ndarray, tmp: np.ndarray) -> None:
        if t == 0:
            for row, b in zip(out, start, strict=True):
                row.fill(b * s)
            return
        h = out[-1]  # the factor, shared by the rows, computed in the last one
        np.minimum(_steps_into(e, h), t, out=h)
        np.multiply(slope, h, out=h)
        np.divide(h, t, out=h)
        np.add(s, h, out=h)
        for row, b in zip(out, start, strict=True):  # the last row last
            np.multiply(b, h, out=row)

    return Fill(write, finite)


def _rows(values: torch.Tensor) -> list[float]:
    # one tensor op (tolist), not two (a column's view, then tolist)
    return [float(row[0]) for row in values.tolist()]


class _Reader:
    """:func:`_rows` of each tensor once (a derived program's leaves and anchor share one)."""

    def __init__(self) -> None:
        self._read: dict[int, tuple[torch.Tensor, list[float]]] = {}

    def __call__(self, values: torch.Tensor) -> list[float]:
        found = self._read.get(id(values))
        if found is None or found[0] is not values:
            found = self._read[id(values)] = (values, _rows(values))
        return found[1]


def _leaf_fill(
    leaf: Leaf, anchor: torch.Tensor, restarted: bool, n: int, rows: Callable = _rows
) -> Fill | None:
    """Return the kernel of ``leaf.closed(e, anchor, restarted)``, or None when not covered
    (``rows``: how a (groups, 1) tensor's floats are read)."""
    kind = type(leaf)
    base = rows(leaf.base)
    if kind is Cosine:
        # a derived program's anchor is its leaves' base (one tensor): no comparison needed
        if restarted or anchor is leaf.base or bool(torch.equal(anchor, leaf.base)):
            return _cosine(leaf, base, n)
        return None
    if kind is Linear:
        return _linear(leaf, base if restarted else rows(anchor))
    if kind is Lambda and not leaf.lambda_field and leaf.fn_keys is not None:
        steps = list(leaf.fn_keys)
        if len(steps) == leaf.groups and all(
            isinstance(k, tuple) and len(k) == 2 and k[0] == "linear_from_zero" for k in steps
        ):
            return _linear_from_zero(leaf, base, [int(k[1]) for k in steps], n)
    return None


@dataclass
class _Piece:
    start: int
    """The first global scheduler step of the segment."""
    end: int
    """One past its last global step (clipped to n)."""
    fill: Fill


Task = tuple[Write, int, int, int]
"""A dense chunk: the piece's write, its first local step, and the columns [c, d)."""


@dataclass
class Kernel:
    """A program's closed form as a few fused loops (see the module doc)."""

    pieces: list[_Piece]
    groups: int
    n: int
    lr0: list[float]
    momentum0: list[float] | None

    def evaluate(
        self,
        k: np.ndarray | None,
        steps: np.ndarray | None = None,
        closed0: list[float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """Return lr and momentum (groups, len(k)) at sorted scheduler steps ``k``, and
        whether every lr is finite. ``k`` None: every step ``0..n-1``, and ``steps`` (when
        given, int64 of n) is filled with them too, and ``closed0`` (when given) with the
        closed form's lr at step 0 per group (before torch's lr0 takes its place)."""
        size = self.n if k is None else k.size
        lr = np.empty((self.groups, size), dtype=np.float64)
        if k is None:
            finite = self._dense(lr, steps)
            zeros = 1 if size else 0
            if closed0 is not None and size:
                closed0.extend(lr[:, 0].tolist())
        else:
            self._sparse(k, lr)
            finite = self._finite or math.isfinite(float(lr.sum()))
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
        # every value is finite (known from the parameters): the output is not checked
        self._finite = all(p.fill.finite for p in self.pieces)
        self._tasks: tuple[int, list[Task]] | None = None

    def _sparse(self, k: np.ndarray, lr: np.ndarray) -> None:
        starts = [p.start for p in self.pieces]
        bounds = [*np.searchsorted(k, starts).tolist(), k.size]
        for i, piece in enumerate(self.pieces):
            lo, hi = bounds[i], bounds[i + 1]
            if lo >= hi:
                continue
            e = (k[lo:hi] - piece.start).astype(np.float64)
            piece.fill.write(e, lr[:, lo:hi], np.empty(hi - lo))

    def _chunks(self) -> list[Task]:
        """Return the dense chunks (made once per chunk size)."""
        if self._tasks is None or self._tasks[0] != CHUNK:
            tasks = [
                (piece.fill.write, c - piece.start, c, min(end, c + CHUNK))
                for piece, start, end in self._spans
                for c in range(start, end, CHUNK)
            ]
            self._tasks = (CHUNK, tasks)
        return self._tasks[1]

    def _dense(self, lr: np.ndarray, steps: np.ndarray | None) -> bool:
        tasks = self._chunks()
        if self.n < THREADS_MIN or THREADS == 1:
            return self._run(iter(tasks), lr, steps)
        budget.check()
        # this thread and the helpers take the chunks one at a time from one iterator (next()
        # on a list iterator is atomic under the GIL): one that a busy machine holds back
        # does less, none waits for another's share
        queue = iter(tasks)
        pool = _executor()
        helpers = [pool.submit(self._run, queue, lr, steps) for _ in range(THREADS - 1)]
        finite = False
        try:
            finite = self._run(queue, lr, steps)
        finally:  # a helper still queued (the pool busy with other calls) has nothing left
            helped = all([f.cancel() or f.result() for f in helpers])
        budget.check()
        return finite and helped

    def _run(self, tasks: Iterator[Task], lr: np.ndarray, steps: np.ndarray | None) -> bool:
        """Fill the columns of the chunks ``tasks`` gives (and their ``steps``), a chunk at a
        time; return whether they are all finite (known, or a sum per chunk, while the chunk
        is in cache)."""
        tmp = _scratch.get(CHUNK)
        check = not self._finite
        finite = True
        for write, first, c, d in tasks:
            out = lr[:, c:d]
            write(first, out, tmp[: d - c])
            if check:
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
    rows = _Reader()
    if isinstance(root, Leaf):
        fill = _leaf_fill(root, anchor, False, n, rows)
        if fill is None:
            return None
        pieces.append(_Piece(0, n, fill))
    elif isinstance(root, Sequential):
        for i, seg in enumerate(root.segments):
            if seg.restarted and seg.leaf.relative:
                return None
            fill = _leaf_fill(seg.leaf, anchor, seg.restarted, n, rows)
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
        lr0=rows(program.lr0),
        momentum0=None if program.momentum0 is None else rows(program.momentum0),
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


@dataclass
class DenseChecked(Fast):
    """A fast path for every step ``0..n-1`` whose probes are read from its own values: the
    probes' points are among the steps it evaluates, and the kernel gives a step the same
    bits wherever it sits, so the checks are :func:`fast_of`'s on the same floats, made after
    the evaluation instead of before: the closed form at step 0 is torch's lr there (so it is
    finite), every other value finite (which covers the probes' other points); the final lr
    is the value at step n-1. ``final`` is not read (each evaluation reads its own)."""

    def evaluate(
        self, k: np.ndarray | None, steps: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, list[float]] | None:
        if k is not None:  # sampled: the probes decide first
            raise ValueError("a DenseChecked fast path evaluates every step")
        budget.check()
        closed0: list[float] = []
        lr, mom, finite = self.kernel.evaluate(None, steps, closed0)
        if not matches_lr0(closed0, self.kernel.lr0):
            return None
        if not (finite or bool(np.isfinite(lr).all())):
            return None
        n = self.kernel.n
        final = self.kernel.lr0 if n == 1 else lr[:, n - 1].tolist()
        return lr, mom, [float(v) for v in final]


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
