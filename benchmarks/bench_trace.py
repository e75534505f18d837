"""What tracing module calls costs: time against the untraced forward, and memory per call.

Run with ``python benchmarks/bench_trace.py``. It prints, for a 50-layer MLP at two sizes
and a tiny GPT-style transformer:

- the untraced forward time (no global hooks installed at all);
- the traced forward, one ``tracing`` block per forward (what a short test pays, the
  block's own set-up included), and inside one long block (the steady state);
- the ratio of each to the untraced forward, all measured in this same run, interleaved,
  best of many repeats so that other processes on the machine disturb them least, and for
  the traced forward also the median (and quartiles) of its ratio taken round by round,
  which a disturbance moves least;
- for reference, the forward with two global hooks that do nothing (torch's own cost of
  calling hooks, the floor of any hook-based tracer), with a bare-minimum tracer (one
  sampled digest of each call's output and nothing else: the floor of any hook-based
  tracer written in Python that can find a diverging module), and with the plugin's
  eval-mode hook alone (what a marked test's forward costs before any tracing), with the
  traced forward's ratio to the latter;

then the memory a trace holds per module call for small and for large tensors (it must not
grow with tensor sizes), and that no global forward hook is left installed.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable

import torch
from torch.nn.modules import module as torch_module

from pytest_determinism.nondeterminism.digest import tensor_digest
from pytest_determinism.nondeterminism.trace import tracing
from pytest_determinism.state.evalmode import EvalModeGuard

GOAL = 1.3


def mlp(width: int, depth: int = 50) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers)


class Block(torch.nn.Module):
    """A pre-norm transformer block built from modules, as Hugging Face models are."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.drop1 = torch.nn.Dropout(0.1)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim)
        )
        self.drop2 = torch.nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop1(self.proj(attended.transpose(1, 2).reshape(batch, length, dim)))
        out: torch.Tensor = x + self.drop2(self.mlp(self.norm2(x)))
        return out


class TinyTransformer(torch.nn.Module):
    def __init__(self, vocab: int = 256, dim: int = 64, heads: int = 4, depth: int = 4) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.blocks = torch.nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.norm(x))
        return logits


def rounds_of(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function in each of ``repeats`` rounds, the functions
    interleaved within a round.

    Each measurement loops a function for about 50 ms, so short forwards are timed over
    many calls and long ones stay affordable.
    """
    loops = {}
    for name, function in functions.items():
        start = time.perf_counter()
        function()
        loops[name] = max(1, int(0.05 / max(time.perf_counter() - start, 1e-6)))
    rounds: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(loops[name]):
                function()
            rounds[name].append((time.perf_counter() - start) / loops[name])
    return rounds


def paired_ratio(measured: list[float], reference: list[float]) -> tuple[float, float, float]:
    """Median, first and third quartile of ``measured / reference`` taken round by round.

    Measurements of one round ran back to back, so a disturbance on this shared machine
    (another process, a frequency change) moves both: the paired ratios scatter far less
    than the ratio of two best-of figures taken from different rounds.
    """
    ratios = sorted(m / r for m, r in zip(measured, reference, strict=True))
    first, median, third = statistics.quantiles(ratios, n=4)
    return median, first, third


def calls_per_forward(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """Module calls of one forward, and how many of them a trace records."""
    calls = [0]

    def count(module: torch.nn.Module, args: object) -> None:
        calls[0] += 1

    handle = torch_module.register_module_forward_pre_hook(count)
    try:
        with tracing() as trace:
            model(x)
    finally:
        handle.remove()
    return calls[0], len(trace)


def _nothing(*args: object) -> None:
    return None


class BareMinimumTracer:
    """The least a hook-based tracer that finds a diverging module could do: note each
    call's module and one digest of its output, nothing else (no names, no inputs, no
    state, no nesting). Its cost is the floor under any such tracer written in Python."""

    def __init__(self) -> None:
        self.stack: list[torch.nn.Module] = []
        self.rows: list[tuple[int, int]] = []

    def enter(self, module: torch.nn.Module, args: object) -> None:
        self.stack.append(module)

    def exit(self, module: torch.nn.Module, args: object, kwargs: object, result: object) -> None:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()
            if type(result) is torch.Tensor:
                self.rows.append((id(module), tensor_digest(torch, result)))


def time_model(
    name: str, model: torch.nn.Module, x: torch.Tensor, repeats: int
) -> tuple[float, float]:
    """Print the timings of ``model``; return the traced forward's ratio to the untraced,
    best of the rounds and median of the round-by-round ratios."""
    model.eval()
    calls, recorded = calls_per_forward(model, x)

    def plain() -> object:
        return model(x)

    def one_block_per_forward() -> object:
        with tracing():
            return model(x)

    steady_state_runs = 5

    def one_long_block() -> object:
        with tracing():
            for _ in range(steady_state_runs):
                model(x)
        return None

    def idle_hooks() -> object:
        handles = [
            torch_module.register_module_forward_pre_hook(_nothing),
            torch_module.register_module_forward_hook(_nothing, with_kwargs=True, always_call=True),
        ]
        try:
            return model(x)
        finally:
            for handle in handles:
                handle.remove()

    def bare_minimum() -> object:
        tracer = BareMinimumTracer()
        handles = [
            torch_module.register_module_forward_pre_hook(tracer.enter),
            torch_module.register_module_forward_hook(tracer.exit, with_kwargs=True),
        ]
        try:
            return model(x)
        finally:
            for handle in handles:
                handle.remove()

    def eval_mode_hook() -> object:
        guard = EvalModeGuard(strict=False, warn=False)
        guard.install()
        try:
            return model(x)
        finally:
            guard.restore()

    functions = {
        "plain": plain,
        "block": one_block_per_forward,
        "steady": one_long_block,
        "idle": idle_hooks,
        "bare": bare_minimum,
        "eval": eval_mode_hook,
    }
    with torch.no_grad():
        for function in functions.values():
            function()  # warm up
        rounds = rounds_of(functions, repeats=repeats)
    times = {key: min(seconds) for key, seconds in rounds.items()}
    paired, low, high = paired_ratio(rounds["block"], rounds["plain"])
    untraced = times["plain"]
    block = times["block"]
    steady = times["steady"] / steady_state_runs
    print(
        f"{name}: {calls} module calls, {recorded} recorded\n"
        f"  untraced {untraced * 1e3:8.3f} ms   traced {block * 1e3:8.3f} ms "
        f"({block / untraced:4.2f}x)   steady {steady * 1e3:8.3f} ms "
        f"({steady / untraced:4.2f}x)   "
        f"+{(block - untraced) / calls * 1e6:5.1f} us per module call\n"
        f"  reference: idle hooks {times['idle'] / untraced:4.2f}x, bare-minimum tracer "
        f"{times['bare'] / untraced:4.2f}x, eval-mode hook "
        f"{times['eval'] / untraced:4.2f}x; traced / eval-mode hook {block / times['eval']:4.2f}x\n"
        f"  traced / untraced round by round: median {paired:4.2f}x "
        f"(quartiles {low:4.2f}-{high:4.2f}x)"
    )
    return block / untraced, paired


def trace_bytes_per_call(width: int, batch: int, forwards: int) -> tuple[float, int]:
    """Python memory a trace holds per module call (tensors live outside Python's heap)."""
    model = mlp(width, depth=10).eval()
    x = torch.randn(batch, width)
    with torch.no_grad():
        gc.collect()
        tracemalloc.start()
        with tracing() as trace:
            for _ in range(forwards):
                model(x)
        _ = trace.calls  # the per-call records a diagnosis builds, too
        held, _peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return held / len(trace), len(trace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=9,
        help="timing rounds (best of, and median of paired ratios)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hooks = torch_module._global_forward_hooks, torch_module._global_forward_pre_hooks
    assert not any(hooks), "a global forward hook is installed before the benchmark"

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\nTime: untraced forward vs traced (one block per forward, and steady state)")
    ratios = {
        "50-layer MLP, width 256, batch 64": time_model(
            "50-layer MLP, width 256, batch 64", mlp(256), torch.randn(64, 256), args.repeats
        ),
        "50-layer MLP, width 1024, batch 64": time_model(
            "50-layer MLP, width 1024, batch 64", mlp(1024), torch.randn(64, 1024), args.repeats
        ),
        "tiny transformer, 4 blocks, 64 dims, 8x64": time_model(
            "tiny transformer, 4 blocks, 64 dims, 8x64",
            TinyTransformer(),
            torch.randint(0, 256, (8, 64)),
            args.repeats,
        ),
    }

    print("\nMemory a trace holds per module call (independent of tensor size)")
    for width, batch in ((16, 2), (1024, 256)):
        for forwards in (10, 100):
            per_call, recorded = trace_bytes_per_call(width, batch, forwards)
            tensor_kib = width * batch * 4 / 1024
            print(
                f"  activations {tensor_kib:8.1f} KiB, {recorded:5d} calls: "
                f"{per_call:6.0f} bytes per call"
            )

    installed = len(torch_module._global_forward_hooks) + len(
        torch_module._global_forward_pre_hooks
    )
    print(f"\nGlobal forward hooks installed outside a tracing block: {installed}")
    assert installed == 0
    print(f"\nGoal: traced forward < {GOAL}x the untraced forward (best of / round by round)")
    for name, (best, paired) in ratios.items():
        verdict = (
            "met"
            if max(best, paired) < GOAL
            else "on the line"
            if min(best, paired) < GOAL
            else "not met"
        )
        print(f"  {verdict:11s}  {name}: {best:.2f}x / {paired:.2f}x")


if __name__ == "__main__":
    main()
