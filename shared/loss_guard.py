"""The loss guard: when the reported loss climbs, go back and halve the lr.

Zeroth-order runs at too large an lr rise for a while and then break down:
every step also moves the weights along its random direction's noise, and at
a large lr that random walk outgrows the signal. Lowering the lr afterwards
stops the damage but does not undo it. The guard does both:

- The rounds are cut into windows of ``guard_rounds``. A round's loss is the
  median of the losses its clients reported; a window's, the mean of its
  rounds'.
- When a window ends, its loss is compared with the best earlier window's. If
  it is higher by more than ``guard_z`` standard errors of the difference,
  that round commits no step of its own: it commits the negated sum of every
  step since the best window's end (``guard_return`` window_end) or its start
  (window_start). Integer addition is exact, so the weights are again, bit for
  bit, the ones the best window ended or started with.
- Why the start: a round's loss is measured at the weights before its step,
  so a window's loss describes the weights from its start to just before its
  end. Its end is the one point it did not measure. When the damage happens
  inside the best window (at a large lr, around the warmup's peak), its end
  already holds it, and returning there repeats the damage; its start, for the
  first window the base weights, is a point the window's loss vouches for.
  The price is one window's progress per rollback.
- Every later round then runs at half the lr, down to 2**-MAX_HALVINGS of the
  schedule's; after that the guard stands aside.
- Why remeasure (``guard_remeasure``): the best window is the lowest of many
  noisy windows, so its mean sits below what its weights give by chance. Held
  to it, the windows after a rollback, run from those very weights, rise above
  it by that chance alone and roll back again, halving the lr each time. With
  remeasure a rollback forgets the best window, and the window that follows it
  becomes the reference: the restored weights are measured afresh.

The state is a function of the committed rounds alone (their mean losses and
entries, in order), so a restarted coordinator, a verifier and a simulation
all derive the same rollbacks. The losses are what clients report, hence the
median: a minority that lies about its loss moves a round's loss no further
than the honest reports reach. Even a majority could only cost the run
progress (at most MAX_HALVINGS rollbacks), never steer its weights: a
rollback only returns to weights the ledger already held.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MAX_HALVINGS = 4


def round_loss(losses: Iterable[float | None]) -> float | None:
    """The median of a round's finite reported losses (None: nobody reported one)."""
    finite = [x for x in losses if x is not None and math.isfinite(x)]
    return statistics.median(finite) if finite else None


@dataclass(frozen=True)
class Window:
    """Running sums of the per-round mean losses of one window."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def plus(self, loss: float | None) -> Window:
        if loss is None or not math.isfinite(loss):
            return self
        return Window(self.n + 1, self.total + loss, self.squares + loss * loss)

    @property
    def mean(self) -> float:
        return self.total / self.n

    def mean_variance(self) -> float:
        """The variance of the mean: the rounds' sample variance over n."""
        var = max(self.squares - self.total * self.total / self.n, 0.0) / (self.n - 1)
        return var / self.n


def rose(window: Window, best: Window, z: float) -> bool:
    """The window's loss lies more than z standard errors above the best window's."""
    if window.n < 2 or best.n < 2:
        return False
    diff = window.mean - best.mean
    return diff > 0 and diff * diff > z * z * (window.mean_variance() + best.mean_variance())


class LossGuard:
    """Fed every committed round in order (``record``); asked about the round
    being committed (``undo``) and the lr of the rounds to come (``lr_factor``)."""

    def __init__(self, guard_rounds: int, guard_z: float, guard_return: str = "window_end", remeasure: bool = False) -> None:
        self.every = guard_rounds
        self.z = guard_z
        self.to_start = guard_return == "window_start"
        self.remeasure = remeasure
        self.halvings = 0
        self.rollbacks: list[int] = []  # the rounds that rolled back
        self.best: Window | None = None
        self.current = Window()
        self.since_best: dict[int, int] = {}  # every step since the restore point, summed per seed
        self.in_window: dict[int, int] = {}  # the current window's steps, summed per seed

    @classmethod
    def for_spec(cls, spec) -> LossGuard | None:
        if spec.guard_rounds == 0:
            return None
        return cls(spec.guard_rounds, spec.guard_z, spec.guard_return, spec.guard_remeasure)

    def lr_factor(self) -> float:
        return math.ldexp(1.0, -self.halvings)

    def undo(self, round_no: int, loss: float | None) -> dict[int, int] | None:
        """The entries round ``round_no`` commits instead of its own steps, or
        None when it commits its own: the negated steps since the restore
        point, when this round ends a window whose loss rose. ``loss``: the
        round's round_loss."""
        if round_no % self.every or self.halvings >= MAX_HALVINGS or self.best is None:
            return None
        if not rose(self.current.plus(loss), self.best, self.z):
            return None
        return {seed: -q for seed, q in self.since_best.items()}

    def record(self, round_no: int, loss: float | None, entries: Mapping[int, int]) -> None:
        rolled_back = self.undo(round_no, loss) is not None
        self.current = self.current.plus(loss)
        _add(self.since_best, entries)
        _add(self.in_window, entries)
        if round_no % self.every:
            return
        if rolled_back:
            self.halvings += 1
            self.rollbacks.append(round_no)
            if self.remeasure:
                self.best = None  # the next window is the reference; since_best is already empty
        elif self.current.n >= 2 and (self.best is None or self.current.mean < self.best.mean):
            self.best = self.current
            self.since_best = self.in_window if self.to_start else {}
        self.current, self.in_window = Window(), {}


def _add(total: dict[int, int], entries: Mapping[int, int]) -> None:
    """Add a round's entries into per-seed sums, keeping only the nonzero ones."""
    for seed, q in entries.items():
        value = total.get(seed, 0) + q
        if value:
            total[seed] = value
        else:
            total.pop(seed, None)
