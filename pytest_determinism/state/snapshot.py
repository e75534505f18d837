"""The global state a marked test changes, as one comparable snapshot, and the changes.

A marked test captures a ``GlobalState`` before anything else happens, applies the
deterministic settings, and restores the snapshot after its fixtures are torn down, so
unmarked tests and other plugins never see a difference.

torch is only read when it is already imported, and CUDA only when it is initialised.
TF32 has two API families in torch: the legacy ``allow_tf32`` / ``float32_matmul_precision``
and the newer ``fp32_precision`` strings. Once the newer one has been used, reading the
legacy getters raises, and writing the legacy setters mixes the two; so each backend is
read and written in the family the user is already on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_determinism.state.cublas import CUBLAS_WORKSPACE_CONFIG
from pytest_determinism.state.rng import RngState, capture_rng, restore_rng, torch_if_imported

__all__ = [
    "GlobalState",
    "TorchFlags",
    "apply_deterministic_settings",
    "capture",
    "capture_torch_flags",
    "restore",
]


# Backends whose fp32_precision decides TF32 (CUDA) or bf16 (oneDNN) for float32 work.
_NEW_API_MATMUL = ("cuda.matmul", "mkldnn.matmul")
_NEW_API_CUDNN = ("cudnn.conv", "cudnn.rnn")


def _backend(torch: Any, dotted: str) -> Any:
    obj = torch.backends
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Tf32State:
    """TF32 settings of one backend group.

    ``effective`` holds the ``fp32_precision`` strings, which are always readable and say
    what torch will do; snapshots compare on them alone. ``legacy`` and ``values`` say how
    to write them back: through the legacy API (``values`` its readings) or the new one.
    The legacy getters raise after the two APIs were mixed, and an equivalent consistent
    state makes them readable again: the same settings, so the same snapshot.
    """

    legacy: bool = field(compare=False)
    values: tuple[Any, ...] = field(compare=False)
    effective: tuple[str, ...] = ()


@dataclass(frozen=True)
class TorchFlags:
    """Every torch flag a marked test may change."""

    deterministic: bool
    warn_only: bool
    fill_uninitialized_memory: bool
    inductor_deterministic: bool | None
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    matmul_tf32: Tf32State
    cudnn_tf32: Tf32State
    threads: int


@dataclass(frozen=True)
class GlobalState:
    """Everything a marked test may change, comparable with ``==``."""

    rng: RngState
    torch: TorchFlags | None
    cublas_workspace_config: str | None
    inductor_deterministic_env: str | None = None


# Read by inductor's config when it is first imported (torch.compile imports it).
INDUCTOR_DETERMINISTIC = "TORCHINDUCTOR_DETERMINISTIC"


def _inductor_config() -> Any | None:
    # Importing inductor's config costs about 2 s; only touch it when someone else has.
    return sys.modules.get("torch._inductor.config")


def _strings(torch: Any, names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(str(_backend(torch, n).fp32_precision) for n in names)


def _read_matmul_tf32(torch: Any) -> Tf32State:
    effective = _strings(torch, _NEW_API_MATMUL)
    try:
        return Tf32State(True, (torch.get_float32_matmul_precision(),), effective)
    except RuntimeError:
        return Tf32State(False, effective, effective)


def _read_cudnn_tf32(torch: Any) -> Tf32State:
    effective = _strings(torch, _NEW_API_CUDNN)
    try:
        return Tf32State(True, (bool(torch.backends.cudnn.allow_tf32),), effective)
    except RuntimeError:
        return Tf32State(False, effective, effective)


def _write_matmul_tf32(torch: Any, state: Tf32State) -> None:
    if state.legacy:
        torch.set_float32_matmul_precision(state.values[0])
        return
    for name, value in zip(_NEW_API_MATMUL, state.values, strict=True):
        _backend(torch, name).fp32_precision = value


def _write_cudnn_tf32(torch: Any, state: Tf32State) -> None:
    if state.legacy:
        torch.backends.cudnn.allow_tf32 = state.values[0]
        return
    for name, value in zip(_NEW_API_CUDNN, state.values, strict=True):
        _backend(torch, name).fp32_precision = value


def capture_torch_flags(torch: Any) -> TorchFlags:
    """Read every torch flag a marked test may change (torch must be imported)."""
    inductor = _inductor_config()
    return TorchFlags(
        deterministic=bool(torch.are_deterministic_algorithms_enabled()),
        warn_only=bool(torch.is_deterministic_algorithms_warn_only_enabled()),
        fill_uninitialized_memory=bool(torch.utils.deterministic.fill_uninitialized_memory),
        inductor_deterministic=None if inductor is None else bool(inductor.deterministic),
        cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
        matmul_tf32=_read_matmul_tf32(torch),
        cudnn_tf32=_read_cudnn_tf32(torch),
        threads=int(torch.get_num_threads()),
    )


def capture() -> GlobalState:
    """Snapshot the global state without importing torch or initialising CUDA."""
    torch = torch_if_imported()
    return GlobalState(
        rng=capture_rng(),
        torch=None if torch is None else capture_torch_flags(torch),
        cublas_workspace_config=os.environ.get(CUBLAS_WORKSPACE_CONFIG),
        inductor_deterministic_env=os.environ.get(INDUCTOR_DETERMINISTIC),
    )


def _switch_deterministic_algorithms(torch: Any, mode: bool, warn_only: bool) -> None:
    # torch.use_deterministic_algorithms imports inductor's config (about 2 s the first
    # time) only to mirror the flag there; callers mirror it themselves when inductor is
    # loaded, which is all the public function adds.
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


def _restore_tf32(
    torch: Any,
    wanted: Tf32State,
    read: Callable[[Any], Tf32State],
    write: Callable[[Any, Tf32State], None],
) -> None:
    if read(torch) == wanted:
        return
    write(torch, wanted)
    if read(torch) != wanted:
        # The legacy value could not express what the new-API strings held.
        write(torch, Tf32State(False, wanted.effective, wanted.effective))


def _restore_torch(torch: Any, flags: TorchFlags, inductor_env: str | None) -> None:
    if (
        torch.are_deterministic_algorithms_enabled() != flags.deterministic
        or torch.is_deterministic_algorithms_warn_only_enabled() != flags.warn_only
    ):
        _switch_deterministic_algorithms(torch, flags.deterministic, flags.warn_only)
    inductor = _inductor_config()
    if inductor is not None:
        # Loaded during the test: put back what its import and torch's own switch would
        # have left.
        inductor.deterministic = (
            flags.deterministic or inductor_env == "1"
            if flags.inductor_deterministic is None
            else flags.inductor_deterministic
        )
    torch.utils.deterministic.fill_uninitialized_memory = flags.fill_uninitialized_memory
    torch.backends.cudnn.deterministic = flags.cudnn_deterministic
    torch.backends.cudnn.benchmark = flags.cudnn_benchmark
    _restore_tf32(torch, flags.matmul_tf32, _read_matmul_tf32, _write_matmul_tf32)
    _restore_tf32(torch, flags.cudnn_tf32, _read_cudnn_tf32, _write_cudnn_tf32)
    if torch.get_num_threads() != flags.threads:
        torch.set_num_threads(flags.threads)


def restore(state: GlobalState) -> None:
    """Put everything back to ``state``."""
    restore_rng(state.rng)
    torch = torch_if_imported()
    if torch is not None and state.torch is not None:
        _restore_torch(torch, state.torch, state.inductor_deterministic_env)
    for name, value in (
        (CUBLAS_WORKSPACE_CONFIG, state.cublas_workspace_config),
        (INDUCTOR_DETERMINISTIC, state.inductor_deterministic_env),
    ):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def apply_deterministic_settings(
    *, warn_only: bool, tf32: bool, threads: int | None, baseline: GlobalState
) -> None:
    """Switch torch to deterministic kernels as a marked test asks.

    ``baseline`` is the snapshot taken just before, telling which TF32 API family each
    backend is on. Without torch imported there is nothing to switch.
    """
    torch = torch_if_imported()
    if torch is None or baseline.torch is None:
        return
    _switch_deterministic_algorithms(torch, True, warn_only)
    inductor = _inductor_config()
    if inductor is not None:
        inductor.deterministic = True
    else:
        # Importing inductor's config costs about 1 s, and torch.use_deterministic_algorithms
        # would import it only to set this flag. A torch.compile inside the test imports it
        # and reads the flag's default from the environment then.
        os.environ[INDUCTOR_DETERMINISTIC] = "1"
    torch.utils.deterministic.fill_uninitialized_memory = True
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    matmul, cudnn = baseline.torch.matmul_tf32, baseline.torch.cudnn_tf32
    if matmul.legacy:
        # "highest" also keeps oneDNN's CPU matmuls in float32 ("medium" makes them bf16).
        _write_matmul_tf32(torch, Tf32State(True, ("high" if tf32 else "highest",)))
    else:
        cuda = "tf32" if tf32 else "ieee"
        _write_matmul_tf32(torch, Tf32State(False, (cuda, "ieee")))
    if cudnn.legacy:
        _write_cudnn_tf32(torch, Tf32State(True, (tf32,)))
    else:
        value = "tf32" if tf32 else "ieee"
        _write_cudnn_tf32(torch, Tf32State(False, (value, value)))
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
