"""The life of one marked test: what is set up before its fixtures and undone after them.

``start`` runs before the function-scoped fixtures are set up, ``before_body`` right before
each run of the test body (after every other plugin's reseeding), ``finish`` after the
fixtures are torn down. Under ``--determinism`` the run checker reseeds before each run
itself, and ``before_run`` takes the place of ``before_body``. Between ``start`` and
``finish`` the global state is the test's; afterwards it is exactly what it was before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from pytest_determinism.options import TestSettings
from pytest_determinism.state import context, hooks
from pytest_determinism.state import snapshot as state
from pytest_determinism.state.evalmode import EvalModeGuard
from pytest_determinism.state.rng import seed_everything, torch_if_imported

__all__ = ["ActiveTest"]


class ActiveTest:
    """Global state, eval-mode guard and seed of one marked test."""

    def __init__(self, settings: TestSettings) -> None:
        self.settings = settings
        self.guard = EvalModeGuard(strict=settings.eval_mode == "strict")
        self._baseline = state.capture()
        self._torch_ready = False
        self._outer_seed = context.current_seed()

    def _take_over_torch(self) -> None:
        # torch may be imported by a fixture after ``start``: its flags and RNG join the
        # baseline then, so they are still restored exactly.
        if self._torch_ready or torch_if_imported() is None:
            return
        if self._baseline.torch is None:
            late = state.capture()
            self._baseline = dataclasses.replace(
                self._baseline,
                torch=late.torch,
                rng=dataclasses.replace(
                    self._baseline.rng,
                    torch_cpu=late.rng.torch_cpu,
                    cuda=late.rng.cuda,
                    mps=late.rng.mps,
                ),
            )
        settings = self.settings
        state.apply_deterministic_settings(
            warn_only=settings.warn_only,
            tf32=settings.tf32,
            threads=settings.threads,
            baseline=self._baseline,
        )
        if settings.eval_mode is not False:
            self.guard.install()
        self._torch_ready = True

    def start(self) -> None:
        """Before the function-scoped fixtures: settings, eval mode, every RNG seeded."""
        context.set_current_seed(self.settings.seed)
        self._take_over_torch()
        seed_everything(self.settings.seed)

    def before_body(self) -> None:
        """Right before a run of the test body: reseed, so the body starts from the seed."""
        self._take_over_torch()
        seed_everything(self.settings.seed)

    def before_run(self) -> None:
        """Right before a run of ``--determinism``, which the run checker has just reseeded:
        only take over torch, should an earlier run have imported it."""
        self._take_over_torch()

    def watch_compiled(self, values: Iterable[object]) -> None:
        """Watch the modules among ``values`` compiled in place (``module.compile()``), so the
        plugin's hooks see their calls at the boundary (see ``state.hooks``)."""
        torch = torch_if_imported()
        if torch is None:
            return
        module_class = torch.nn.Module
        modules = [value for value in values if isinstance(value, module_class)]
        if modules:
            hooks.watch_compiled(modules)

    def finish(self) -> None:
        """After the fixtures are torn down: put everything back."""
        self.guard.restore()
        if torch_if_imported() is not None:
            hooks.unwatch_compiled()
        state.restore(self._baseline)
        context.set_current_seed(self._outer_seed)
