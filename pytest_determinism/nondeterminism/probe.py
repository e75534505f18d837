"""The seed probe: random draws inside forward calls come from another seed, all else unchanged.

An inference test must not depend on random state inside the model: a stochastic layer left
in training mode, or random masking or sampling in eval mode. Seeding hides such a bug (every
run draws the same numbers), so the probe changes exactly those draws:

- in the reference run (:meth:`SeedProbe.outermost_exit` while recording), the state of
  every seeded RNG (``random``, NumPy's global RNG, torch's CPU RNG, every initialised
  accelerator) is captured when each *outermost* module call returns;
- in the probe run (after :meth:`SeedProbe.replay`), every RNG is seeded with
  :func:`probe_seed` when outermost call ``n`` starts, and put back to the reference run's
  state captured after call ``n`` when it returns.

So everything outside forward calls (fixtures, models and inputs built in the test body,
draws between two forward calls) sees exactly the reference run's numbers, and a model built
from the seed is not a false alarm, while every draw inside a forward call comes from another
seed. A probe run that makes a different sequence of outermost calls cannot be lined up with
the reference run, and counts as a divergence (:attr:`SeedProbe.mismatch`).

The probe is an :class:`~pytest_determinism.nondeterminism.blocks.OutermostObserver`: pass
it to :func:`~pytest_determinism.nondeterminism.trace.tracing`, which decides what is
outermost (and stands an enclosing probe aside while an inner block runs). Calls that
bypass ``Module.__call__`` (``module.forward(x)``) are not seen, so their draws are not
changed.
"""

from __future__ import annotations

import functools
from typing import Any

from pytest_determinism.state.rng import RngState, capture_rng, restore_rng, seed_everything

__all__ = ["SeedProbe", "probe_seed"]

# Seeds must suit ``numpy.random.seed``, which takes 32 bits.
_SEED_SPACE = 2**32


# Every probe run asks for the same few seeds (seed, call 0, 1, ...), and deriving one
# through NumPy's SeedSequence costs more than restoring every RNG.
@functools.lru_cache(maxsize=4096)
def probe_seed(seed: int, number: int) -> int:
    """The seed every RNG gets when outermost call ``number`` of the probe run starts.

    Derived from ``seed`` and ``number`` (so a probe run is itself repeatable), never equal to
    ``seed``, and different for consecutive calls.
    """
    import numpy as np

    entropy = (seed % 2**64, number, 0x5EED_9B0B)
    derived = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    return derived if derived != seed % _SEED_SPACE else (derived + 1) % _SEED_SPACE


class SeedProbe:
    """Records RNG states in a reference run, then replays them around another seed.

    Use one probe per check: pass it to ``tracing`` for the reference run, call
    :meth:`replay`, pass it to ``tracing`` again for the probe run, then read
    :attr:`mismatch`.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.replaying = False
        self._reference: list[str] = []
        self._probed: list[str] = []
        self._states: dict[int, RngState] = {}

    def replay(self) -> None:
        """Switch from recording the reference run to running the probe run."""
        self.replaying = True
        self._probed = []

    def outermost_enter(self, module: Any, number: int) -> None:
        """Note the call; in the probe run, seed every RNG differently for it."""
        name = type(module).__name__
        if not self.replaying:
            self._reference.append(name)
            return
        self._probed.append(name)
        seed_everything(probe_seed(self.seed, number))

    def outermost_exit(self, module: Any, number: int) -> None:
        """Capture the RNG states (reference run) or put the reference run's back."""
        if not self.replaying:
            self._states[number] = capture_rng()
            return
        state = self._states.get(number)
        # A call the reference run did not make has nothing to go back to; the sequence
        # mismatch is reported instead.
        if state is not None:
            restore_rng(state)

    @property
    def mismatch(self) -> str | None:
        """How the probe run's outermost calls differ from the reference run's, if they do."""
        if not self.replaying or self._probed == self._reference:
            return None
        reference, probed = self._reference, self._probed
        for number, (expected, seen) in enumerate(zip(reference, probed, strict=False)):
            if expected != seen:
                return (
                    f"outermost forward call {number} was {seen} in the probe run but "
                    f"{expected} in the reference run"
                )
        return (
            f"the probe run made {len(probed)} outermost forward calls, the reference run "
            f"{len(reference)}"
        )
