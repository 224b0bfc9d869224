"""The speed benchmark's yardstick: the dense float32 limit of this machine, measured in the same
run, and the load the machine was under while it ran."""

import os
import statistics
import threading
import time

import torch
import torch.nn.functional as F

# each kernel is timed in this many windows of YARDSTICK_SECONDS, the kernels taking turns; on a
# shared machine one 1 s window measured anywhere from 239 to 446 GFLOP/s (issue 18): the best of
# several windows spread over half a minute is what the hardware does
YARDSTICK_WINDOWS, YARDSTICK_SECONDS = 5, 0.4


def best_gflops(fn, flops: float, seconds: float = 1.0) -> float:
    """Best GFLOP/s of `fn` over repeated timings within about `seconds`."""
    fn()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    return flops / best / 1e9


def candidates() -> dict:
    """name -> (kernel, FLOPs of one call): the dense candidates for the limit."""
    kernels = {}
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        kernels[f"torch.mm {n}"] = (lambda a=a, b=b: torch.mm(a, b), 2 * n**3)
        bias = torch.zeros(n)
        kernels[f"oneDNN matmul {n}"] = (
            lambda a=a, b=b, bias=bias: torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], ""), 2 * n**3)
    # the McMahan CNN's two convolutions: 1 -> 32 on 28x28 and 32 -> 64 on 14x14, 5x5, padding 2
    for c_in, c_out, side in ((1, 32, 28), (32, 64, 14)):
        weight = torch.randn(c_out, c_in, 5, 5)
        for batch in (10, 64, 256):
            x = torch.randn(batch, c_in, side, side)
            flops = 2 * batch * c_out * side * side * c_in * 25
            for layout, fmt in (("NCHW", torch.contiguous_format), ("channels-last", torch.channels_last)):
                xl, wl = x.contiguous(memory_format=fmt), weight.contiguous(memory_format=fmt)
                kernels[f"oneDNN conv {c_in}->{c_out} {layout} batch {batch}"] = (
                    lambda xl=xl, wl=wl: F.conv2d(xl, wl, padding=2), flops)
    return kernels


def yardstick() -> dict:
    """The dense limit: the best GFLOP/s of any candidate kernel, each timed in several windows
    interleaved with the others (so a burst of load hits them all), with each one's spread."""
    kernels = candidates()
    windows: dict[str, list[float]] = {name: [] for name in kernels}
    for _ in range(YARDSTICK_WINDOWS):
        for name, (fn, flops) in kernels.items():
            windows[name].append(best_gflops(fn, flops, YARDSTICK_SECONDS))
    per = {name: {"best": max(w), "min": min(w), "median": statistics.median(w), "windows": w} for name, w in windows.items()}
    top = max(per, key=lambda name: per[name]["best"])
    mm = max(v["best"] for k, v in per.items() if k.startswith("torch.mm"))
    conv = max(v["best"] for k, v in per.items() if "conv" in k)
    return {"kernels": per, "limit_kernel": top, "limit_gflops": per[top]["best"],
            "limit_spread": [per[top]["min"], per[top]["best"]], "mm_gflops": mm, "conv_gflops": conv,
            "windows": YARDSTICK_WINDOWS}


class LoadWatch:
    """The 1-minute load average, sampled every few seconds while the benchmark runs."""

    def __init__(self, every: float = 5.0):
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every,), daemon=True)
        self._thread.start()

    def _sample(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict:
        self._stop.set()
        self.samples.append(os.getloadavg()[0])
        cores = os.cpu_count() or 1
        # the benchmark keeps every core busy itself (a quiet 2-core run peaked at 2.1): the machine
        # counts as busy when the load held a core's worth of other work above that
        return {"load_max": max(self.samples), "load_median": statistics.median(self.samples), "cores": cores,
                "busy": max(self.samples) > cores + 1}
