"""What bounds a round: its dense kernels alone, at their exact shapes, in the order the round calls them.

    python -m benchmarks.speed --only bound          # beside the yardstick of the same run
    python -m benchmarks.bound [--cases mlp:1:kernels,2nn:1:generic] [--repeats 5]

One round is recorded through a TorchDispatchMode that notes every call of an operator torch's
FLOP counter knows (mm, bmm, addmm, baddbmm, convolution and its backward: every matmul and
convolution, under vmap too), with its arguments' shapes, strides and scalars. The calls are then
replayed in the same order on tensors of the same shapes and strides, and nothing else: no small
kernels, no Python between them, the operands reused and so warm in cache. The replay's time is
what the round would take if everything but its dense kernels cost nothing, so the round's FLOPs
over it are the most of the dense limit any implementation built on these calls can reach: where
that is below a target, the target needs other kernels or other shapes, not less overhead.

The round, the replay and a window of the yardstick's best kernel (benchmarks/yardstick.py) take
turns, so that the host's drift hits all three alike: the fractions are of the limit measured beside
them, the best of those windows, as the yardstick takes it.

Models whose clients train one module each on the worker pool (the CNN) are recorded on one
thread (the pool then runs inline) and replayed on as many single-threaded workers as the round
has, each replaying its share of the calls at the same time, as the engine's workers do.
"""

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry

from benchmarks import entry, mcmahan_setup as setup, positive_int
from benchmarks.generic import METHODS as PATHS
from benchmarks.yardstick import YARDSTICK_SECONDS, best_gflops, candidates, yardstick
from fedbridge.local import Recipe, per_client
from fedbridge.rounds import initial_model

LR = 0.1
# (model, local epochs, path): the speed table's rounds, the generic path's and the loop's
CASES = ("mlp:1:kernels", "mlp:5:kernels", "2nn:1:kernels", "2nn:5:kernels", "cnn:1:kernels",
         "mlp:1:generic", "2nn:1:generic", "mlp:1:loop", "2nn:1:loop")


@dataclass(frozen=True)
class Operand:
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype


def _counted(func) -> object | None:
    """The FLOP counter's key for `func`: its own, or for an in-place variant (a fused update such as
    the kernels' `weight.baddbmm_`) its functional twin's, which has the same FLOPs."""
    packet = func.overloadpacket
    if packet in flop_registry:
        return packet
    twin = getattr(torch.ops.aten, packet.__name__.rstrip("_"), None) if packet.__name__.endswith("_") else None
    return twin if twin in flop_registry else None


def _operand(x):
    return Operand(tuple(x.shape), tuple(x.stride()), x.dtype) if isinstance(x, torch.Tensor) else x


class Recorder(TorchDispatchMode):
    """Notes (operator, arguments as Operands) of every dense call made while it is active."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _counted(func) is not None:
            self.calls.append((func, tree_map(_operand, args), tree_map(_operand, kwargs)))
        return func(*args, **kwargs)


def _materialised(calls: list[tuple]) -> tuple[list[tuple], float]:
    """The calls on real tensors (one per distinct Operand, small random values, so that repeated
    in-place updates stay finite), and their FLOPs by torch's own formulas."""
    tensors: dict[Operand, torch.Tensor] = {}
    g = torch.Generator().manual_seed(0)

    def real(x):
        if not isinstance(x, Operand):
            return x
        if x not in tensors:
            t = torch.empty_strided(x.shape, x.stride, dtype=x.dtype)
            tensors[x] = t.normal_(0, 0.01, generator=g) if t.is_floating_point() else t.zero_()
        return tensors[x]

    ready, flops = [], 0.0
    for func, args, kwargs in calls:
        a, k = tree_map(real, args), tree_map(real, kwargs)
        out = func(*a, **k)
        flops += flop_registry[_counted(func)](*a, **k, out_val=out)
        ready.append((func, a, k))
    return ready, flops


def _replay(calls: list[tuple]) -> None:
    for func, args, kwargs in calls:
        func(*args, **kwargs)


def replay_seconds(calls: list[tuple], workers: int) -> float:
    """Wall time of one pass over the calls; with workers > 1, the calls cut into that many
    consecutive shares replayed at once on single-threaded workers."""
    if workers == 1:
        began = time.perf_counter()
        _replay(calls)
        return time.perf_counter() - began
    cut = -(-len(calls) // workers)
    threads = [threading.Thread(target=_replay, args=(calls[i : i + cut],)) for i in range(0, len(calls), cut)]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - began
    finally:
        torch.set_num_threads(before)


def _model(name: str, wrap: bool) -> nn.Module:
    model = setup.model_for(name)
    return nn.Sequential(model) if wrap else model


def _round(update, model, params, fed, epochs: int, r: int):
    return setup.fedavg_round(update, model, params, fed, Recipe("sgd", LR, 10, epochs), 0.1, 0, r)


Kernel = tuple[Callable[[], object], float]  # a yardstick candidate: (call, its FLOPs)


def bound_case(fed: setup.McMahan, case: str, repeats: int, limit_kernel: Kernel) -> dict:
    """One case's round beside its dense calls replayed alone and a window of the limit's kernel, the
    three taking turns `repeats` times after a warm-up round and the recording."""
    name, epochs, path = case.split(":")
    epochs = int(epochs)
    update, wrap, _ = PATHS[path]
    model = _model(name, wrap)
    params = initial_model(model, 0)
    threads = torch.get_num_threads()
    workers = min(threads, 10) if path == "kernels" and per_client(model) else 1
    _round(update, model, params, fed, epochs, 1)
    recorder = Recorder()
    torch.set_num_threads(1 if workers > 1 else threads)
    try:
        with recorder:
            _round(update, model, params, fed, epochs, 1)
    finally:
        torch.set_num_threads(threads)
    calls, call_flops = _materialised(recorder.calls)
    rounds, dense, limits = [], [], []
    for r in range(repeats):
        began = time.perf_counter()
        _round(update, model, params, fed, epochs, r + 2)
        rounds.append(time.perf_counter() - began)
        dense.append(replay_seconds(calls, workers))
        limits.append(best_gflops(*limit_kernel, YARDSTICK_SECONDS))
    flops = setup.round_flops(name, epochs)
    limit = max(limits)
    return {"case": case, "model": name, "epochs": epochs, "path": path, "workers": workers,
            "s_per_round": statistics.median(rounds), "round_trials": rounds, "dense_calls": len(calls),
            "dense_s": min(dense), "dense_trials": dense, "limit_gflops": limit, "limit_windows": limits,
            "dense_share": statistics.median(d / r for d, r in zip(dense, rounds)), "flops": flops,
            "dense_call_flops": call_flops, "fraction_of_limit": flops / statistics.median(rounds) / 1e9 / limit,
            "bound_fraction_of_limit": flops / min(dense) / 1e9 / limit}


def section(fed: setup.McMahan, cases: tuple[str, ...], repeats: int, limit_name: str) -> list[dict]:
    """Every case, the limit taken beside each with the yardstick's kernel `limit_name`."""
    limit_kernel = candidates()[limit_name]  # the 16 candidates' operands are built once, not per case
    return [bound_case(fed, c, repeats, limit_kernel) for c in cases]


def show_rows(rows: list[dict], console: Console) -> None:
    t = Table(title="What bounds each round: its dense calls (matmuls, convolutions) replayed alone")
    for col in ("round", "path", "s/round", "dense calls alone, s (best)", "share of round", "limit beside, GFLOP/s",
                "of limit", "bound: of limit", "call FLOPs / model FLOPs"):
        t.add_column(col)
    for r in rows:
        t.add_row(f"{r['model']} E={r['epochs']}", r["path"] + (f" ({r['workers']} workers)" if r["workers"] > 1 else ""),
                  f"{r['s_per_round']:.3f}", f"{r['dense_s']:.3f}", f"{100 * r['dense_share']:.0f}%",
                  f"{r['limit_gflops']:.0f}", f"{100 * r['fraction_of_limit']:.0f}%", f"{100 * r['bound_fraction_of_limit']:.0f}%",
                  f"{r['dense_call_flops'] / r['flops']:.2f}")
    console.print(t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="model:epochs:path, comma-separated")
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--limit-kernel", choices=list(candidates()),
                        help="the yardstick candidate the limit is taken with (default: the best in a yardstick run)")
    args = parser.parse_args()
    cases = tuple(c.strip() for c in args.cases.split(","))
    for c in cases:
        parts = c.split(":")
        if len(parts) != 3 or parts[0] not in ("mlp", "2nn", "cnn") or not parts[1].isdigit() or parts[2] not in PATHS:
            parser.error(f"--cases: {c!r} is not model:epochs:path (model mlp, 2nn or cnn; path one of {', '.join(PATHS)})")
    limit_kernel = args.limit_kernel or yardstick()["limit_kernel"]
    console = Console(width=160)
    console.print(f"the limit taken with {limit_kernel}, {torch.get_num_threads()} threads")
    show_rows(section(setup.federation(setup.load_mnist()), cases, args.repeats, limit_kernel), console)


if __name__ == "__main__":
    entry(main)
