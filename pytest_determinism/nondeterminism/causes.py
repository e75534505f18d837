"""What made a module's own call differ between two runs, and what to do about it.

Each cause is one of this module's constants, with an explanation and a fix in words a
test author can act on: state left by an earlier call, changed torch settings, a draw from
the RNG inside the forward (seed probe run), or randomness outside the seeded RNGs or a
kernel without a deterministic implementation (repeated run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_determinism.nondeterminism.runs import RunKind
    from pytest_determinism.nondeterminism.trace import CallRecord, Trace
    from pytest_determinism.state.snapshot import TorchFlags

__all__ = [
    "BEFORE_MODEL",
    "CALL_SEQUENCE",
    "DIFFERENT_SETTINGS",
    "NONDETERMINISTIC_KERNEL",
    "OUTSIDE_MODULES",
    "OUTSIDE_RNG",
    "OUTSIDE_RNG_FIX",
    "RNG_IN_EVAL",
    "RNG_IN_TRAINING",
    "STATE_LEFT",
    "STOCHASTIC_LAYER",
    "Pair",
    "call_name",
    "stochastic_inside",
]

# Causes (``Diagnosis.cause``).
STOCHASTIC_LAYER = "stochastic layer in training mode"
RNG_IN_TRAINING = "draw from the RNG inside forward in training mode"
RNG_IN_EVAL = "draw from the RNG in eval mode"
STATE_LEFT = "state left by an earlier call"
DIFFERENT_SETTINGS = "torch settings changed between runs (TF32 or thread count)"
OUTSIDE_RNG = "randomness outside the seeded RNGs"
NONDETERMINISTIC_KERNEL = "an op without a deterministic implementation"
BEFORE_MODEL = "the inputs already differed before the model was called"
CALL_SEQUENCE = "a different sequence of module calls"
OUTSIDE_MODULES = "no module output differed"

_EVAL_FIX = (
    "call model.eval() before inference (and use torch.no_grad() or torch.inference_mode()); "
    "a test marked deterministic with the default eval_mode=True does this for you. If the "
    "randomness is intended (a training step, sampling), mark the test stochastic=True"
)
_RNG_IN_EVAL_FIX = (
    "a module must not draw random numbers at inference time: pass the forward a "
    "torch.Generator (the determinism fixture's .generator()) so callers control the draws, "
    "make the draw conditional on self.training, or disable the random masking or sampling "
    "in the model's config; if the output is meant to be random, mark the test stochastic=True"
)
#: The fix for randomness drawn outside the seeded RNGs.
OUTSIDE_RNG_FIX = (
    "draw only from seeded sources: the global RNGs the plugin seeds, "
    "numpy.random.default_rng(seed) or torch.Generator().manual_seed(seed) built from the "
    "test's seed (the determinism fixture's .rng() and .generator()); never "
    "numpy.random.default_rng() without a seed, os.urandom, uuid or the time"
)


def call_name(record: CallRecord) -> str:
    """``qualname (Class)``, or ``Class (the outermost module)``, for sentences."""
    if not record.qualname:
        return f"{record.cls} (the outermost module)"
    return f"{record.qualname} ({record.cls})"


def _settings_changes(a: TorchFlags | None, b: TorchFlags | None) -> list[str]:
    if a is None or b is None or a == b:
        return []
    names = (
        "threads",
        "deterministic",
        "warn_only",
        "matmul_tf32",
        "cudnn_tf32",
        "cudnn_deterministic",
        "cudnn_benchmark",
    )
    return [
        f"{name}: {getattr(a, name)} -> {getattr(b, name)}"
        for name in names
        if getattr(a, name) != getattr(b, name)
    ]


def stochastic_inside(trace: Trace, record: CallRecord) -> tuple[str, ...]:
    """The stochastic layers among ``record`` and the calls inside it, with their mode."""
    if record.compiled is not None:
        # The calls inside a compiled module are not seen; its layers were listed instead.
        return record.compiled
    found = [record, *trace.nested(record)]
    return tuple(
        f"{call.display_name} ({call.cls}, {'training' if call.training else 'eval'})"
        for call in found
        if call.stochastic
    )


def _state_changes(a: CallRecord, b: CallRecord) -> tuple[list[str], list[str]]:
    """Names of the buffers and of the parameters that differed on entry."""
    left = {leaf[0]: leaf for leaf in a.state}
    right = {leaf[0]: leaf for leaf in b.state}
    changed = [name for name in left.keys() | right.keys() if left.get(name) != right.get(name)]
    buffers = sorted(n for n in changed if (left.get(n) or right[n])[1] != "version")
    parameters = sorted(n for n in changed if (left.get(n) or right[n])[1] == "version")
    return buffers, parameters


def _earlier_training_call(trace: Trace, record: CallRecord) -> CallRecord | None:
    """An earlier call of the same module in training mode (it updates running stats)."""
    for call in trace.calls[: record.index]:
        if call.qualname == record.qualname and call.root == record.root and call.training:
            return call
    return None


class Pair:
    """The two runs being compared: their traces, the kind of check and how the second run
    is named in sentences."""

    def __init__(self, a: Trace, b: Trace, kind: RunKind, other: str) -> None:
        self.a = a
        self.b = b
        self.kind = kind
        self.other = other

    def module_cause(self, record: CallRecord, twin: CallRecord) -> tuple[str, str, str]:
        """Cause, explanation and fix when ``record``'s own code made the difference."""
        name = call_name(record)
        buffers, parameters = _state_changes(record, twin)
        if buffers or parameters:
            return self._state_cause(record, buffers, parameters)
        changes = _settings_changes(self.a.settings, self.b.settings)
        if changes:
            return (
                DIFFERENT_SETTINGS,
                f"{name} got identical inputs and state, but torch's settings changed between "
                f"the runs ({'; '.join(changes)}): CPU reductions change with the thread count, "
                "TF32 and the deterministic-algorithms switch change the kernels used.",
                "keep the settings fixed for the whole test: mark it @deterministic(threads=N) to "
                "pin torch.set_num_threads, leave tf32=False, and do not change these settings "
                "inside the test",
            )
        if self.kind == "seed":
            return self._rng_cause(record)
        return self._repeat_cause(record)

    def _state_cause(
        self, record: CallRecord, buffers: list[str], parameters: list[str]
    ) -> tuple[str, str, str]:
        name = call_name(record)
        parts = []
        if buffers:
            parts.append(f"its buffers {', '.join(buffers)} held other values")
        if parameters:
            parts.append(
                f"its parameters {', '.join(parameters)} had been modified in place (their "
                "version counters differ: an optimizer step, load_state_dict or another "
                "in-place update)"
            )
        writer = _earlier_training_call(self.a, record) or _earlier_training_call(self.b, record)
        hint = ""
        if writer is not None and record.stochastic:
            hint = (
                f" It was called in training mode (call {writer.index}), where it updates its "
                "running statistics on every call, so each run starts from what the previous "
                "one left."
            )
        return (
            STATE_LEFT,
            f"{name} got identical inputs, but on entry {' and '.join(parts)} in {self.other} "
            f"compared with run 0: an earlier call left state behind.{hint}",
            "make every run start from the same state: build the model in the test (or reload "
            "its state_dict at the start), call model.eval() before calls that would update "
            "running statistics, and reset caches between calls (BatchNorm: eval mode, or "
            "track_running_stats=False)",
        )

    def _rng_cause(self, record: CallRecord) -> tuple[str, str, str]:
        name = call_name(record)
        inside = stochastic_inside(self.a, record)
        if record.training and record.stochastic:
            return (
                STOCHASTIC_LAYER,
                f"{name} is a stochastic layer in training mode: it draws random numbers on "
                "every call, so its output depends on the seed.",
                _EVAL_FIX,
            )
        if record.training and record.compiled and any("training)" in s for s in inside):
            # A compiled module's inner calls are not seen: its layers are all we know.
            return (
                STOCHASTIC_LAYER,
                f"{name} is compiled and in training mode, with stochastic layers inside: "
                f"{', '.join(inside)}; they draw random numbers on every call, so its output "
                "depends on the seed.",
                _EVAL_FIX,
            )
        if record.training:
            return (
                RNG_IN_TRAINING,
                f"{name} is in training mode and its own forward draws random numbers "
                "(functional dropout such as F.dropout(x, p, training=self.training), drop "
                "path, noise), so its output depends on the seed"
                + (f"; stochastic layers inside: {', '.join(inside)}" if inside else "")
                + ".",
                _EVAL_FIX,
            )
        return (
            RNG_IN_EVAL,
            f"{name} is in eval mode, yet its forward draws from the random number generator "
            "(random masking, sampling or noise at inference), so its output depends on the "
            "seed.",
            _RNG_IN_EVAL_FIX,
        )

    def _repeat_cause(self, record: CallRecord) -> tuple[str, str, str]:
        name = call_name(record)
        settings = self.a.settings
        switched_off = settings is not None and not settings.deterministic
        kernel_fix = (
            "run with deterministic kernels (mark the test @deterministic; it calls "
            "torch.use_deterministic_algorithms(True) and sets cuDNN to deterministic), "
            "replace the op with one that has a deterministic implementation, or pin "
            "the thread count with @deterministic(threads=N)"
        )
        off = " torch.use_deterministic_algorithms was off during the runs." if switched_off else ""
        if record.from_torch:
            return (
                NONDETERMINISTIC_KERNEL,
                f"{name} is one of torch's own modules and got identical inputs and state, "
                f"yet returned different outputs in {self.other}: one of its kernels is not "
                f"deterministic (atomic adds in scatter/index_add or a cuDNN algorithm on "
                f"GPU).{off}",
                kernel_fix,
            )
        return (
            OUTSIDE_RNG,
            f"{name} got identical inputs and state, yet returned different outputs in "
            f"{self.other}, although every seeded RNG was reseeded: its forward draws "
            "randomness outside the seeded RNGs (an unseeded numpy.random.default_rng() or "
            "torch.Generator(), os.urandom, uuid, the time), or runs an op without a "
            f"deterministic implementation.{off}",
            OUTSIDE_RNG_FIX + "; " + kernel_fix,
        )
