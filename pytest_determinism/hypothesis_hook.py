"""Making each hypothesis example start from the seed, torch's RNG included.

hypothesis calls ``_hypothesis_setup_hook`` (our entry point in its ``hypothesis`` group)
when it is imported, so the plugin never imports hypothesis itself. The hook registers one
RNG-like object with ``hypothesis.register_random``; hypothesis holds only a weak reference,
so the object lives in this module for the life of the process.

Before every example hypothesis seeds each registered RNG. Ours answers with the marked
test's seed (and reseeds ``random`` and NumPy with it, which hypothesis set to its own
seed just before), so every example starts exactly where the test body would; outside a
marked test it seeds torch with hypothesis's seed, so examples are still reproducible.
Nothing is registered while the plugin is not active in a pytest session: with
``-p no:determinism`` hypothesis still runs the entry point, which then leaves no trace.
Whichever comes second, hypothesis's import or the plugin's configure, registers.
"""

from __future__ import annotations

import sys
from typing import Any

from pytest_determinism.state import context

__all__ = ["TorchRandom", "set_active"]

# A depth, not a flag: pytester runs sessions inside a session, and the inner one ending
# must not switch the outer one off.
_active = 0


_registered = False


def set_active(active: bool) -> None:
    """Turn the registered object on while a pytest session runs with the plugin; register
    it with hypothesis if hypothesis was imported before the plugin was configured."""
    global _active
    _active = max(0, _active + (1 if active else -1))
    if _active and "hypothesis" in sys.modules:
        _register()


class TorchRandom:
    """The RNG-like object hypothesis manages: ``seed``, ``getstate``, ``setstate``."""

    def seed(self, seed: int) -> None:
        """Seed for one example: the marked test's seed, else hypothesis's."""
        if not _active:
            return
        test_seed = context.current_seed()
        if test_seed is not None:
            # Imported here: the plugin loads this module at configure time, and rng
            # imports NumPy, which an unused plugin must not cost.
            from pytest_determinism.state.rng import seed_everything

            seed_everything(test_seed)
            return
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.default_generator.manual_seed(seed)

    def getstate(self) -> Any:
        """torch's CPU RNG state (``random`` and NumPy are saved by hypothesis itself)."""
        torch = sys.modules.get("torch")
        if not _active or torch is None:
            return None
        return torch.get_rng_state()

    def setstate(self, state: Any) -> None:
        """Put back what ``getstate`` returned."""
        torch = sys.modules.get("torch")
        if state is not None and torch is not None:
            torch.set_rng_state(state)


_TORCH_RANDOM = TorchRandom()


def _hypothesis_setup_hook() -> None:
    """Entry point hypothesis runs when it is imported: register, if the plugin is active."""
    if _active:
        _register()


def _register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    import hypothesis

    try:
        # hypothesis registers NumPy's RNG lazily, after everything registered here, and
        # would then reseed NumPy with its own seed after ours. Registering it now puts it
        # first. The function is internal; without it only the NumPy ordering is lost.
        import numpy  # noqa: F401
        from hypothesis.internal.entropy import get_seeder_and_restorer

        get_seeder_and_restorer()
    except (ImportError, AttributeError):
        pass
    hypothesis.register_random(_TORCH_RANDOM)
