"""The report's figures, each drawn with matplotlib and returned as PNG bytes to embed in HTML."""

import io
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedbridge import results  # noqa: E402
from fedbridge.schema import LOCAL  # noqa: E402

OWN, CLEAN = "tab:blue", "tab:orange"
# every figure is drawn as wide as the report's page (report/html.py), so it fills it at its own scale:
# no text shrunk or blown up by the browser
DPI, WIDTH_PX = 90, 1000
WIDTH = WIDTH_PX / DPI  # inches


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _grid(n: int, height: float, cols: int = 4):
    cols = min(cols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def curves(metrics: list[dict], strategy: str, profiles: dict[int, str], shared: str = "clean") -> bytes:
    """Per client: the strategy's accuracy per round on its own and on the clean test set (mean over
    seeds, band ± std), with the local-only model's final level on each as a dotted reference line;
    `shared`: what the clean test set is called ("common" where it is held out of the user's data)."""
    by_round: dict[tuple, list[float]] = defaultdict(list)
    for r in metrics:
        by_round[(r["method"], r["client"], r["test_set"], r["round"])].append(r["accuracy"])
    last = max(r["round"] for r in metrics)
    fig, axes = _grid(len(profiles), 3.4)
    for ax, (client, profile) in zip(axes, sorted(profiles.items())):
        for test_set, color in (("own", OWN), ("clean", CLEAN)):
            rounds = sorted(k[3] for k in by_round if k[:3] == (strategy, client, test_set))
            stats = np.array([results.mean_std(by_round[(strategy, client, test_set, r)]) for r in rounds]) * 100
            if len(rounds):
                shown = shared if test_set == "clean" else test_set
                ax.plot(rounds, stats[:, 0], color=color, marker="o", ms=3, label=f"{strategy}, {shown} test")
                ax.fill_between(rounds, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1], color=color, alpha=0.2)
            alone = by_round.get((LOCAL, client, test_set, last))
            if alone:
                ax.axhline(100 * results.mean_std(alone)[0], color=color, ls=":",
                           label=f"alone, {shared if test_set == 'clean' else test_set} test")
        ax.set_title(f"client {client}: {profile}", fontsize=10)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return png(fig)


def gain_bars(gains: dict[int, list[float]], profiles: dict[int, str], strategy: str) -> bytes:
    """Each client's own-test gain over training alone, error bars ± std over seeds."""
    clients = sorted(gains)
    stats = np.array([results.mean_std(gains[c]) for c in clients]) * 100
    fig, ax = plt.subplots(figsize=(WIDTH, 3.2))
    colors = ["tab:green" if g >= 0 else "tab:red" for g in stats[:, 0]]
    ax.bar(range(len(clients)), stats[:, 0], yerr=stats[:, 1], color=colors, capsize=4, width=0.6)
    # room for at least 6 bars, centred: two clients across the page's width would be slabs
    middle, half = (len(clients) - 1) / 2, max(len(clients), 6) / 2
    ax.set_xlim(middle - half, middle + half)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(clients)), [f"client {c}\n{profiles[c]}" for c in clients], fontsize=8)
    ax.set_ylabel("gain, points of own-test accuracy")
    ax.set_title(f"{strategy} − alone, per client (± std over seeds)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


def samples(rows: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]) -> bytes:
    """Per client (title, original images, original labels, the client's images, the client's labels):
    the same training images before and after its data-quality profile; a changed label in red."""
    n = rows[0][1].shape[0]
    fig, axes = plt.subplots(2 * len(rows), n, figsize=(WIDTH, 2.2 * WIDTH / n * len(rows)), squeeze=False)
    for i, (title, before, before_labels, after, after_labels) in enumerate(rows):
        for j in range(n):
            for k, (images, labels) in enumerate(((before, before_labels), (after, after_labels))):
                ax = axes[2 * i + k, j]
                if images.shape[1] == 3:  # colour images as they are, one channel in grey
                    ax.imshow(images[j].permute(1, 2, 0).clamp(0, 1).numpy())
                else:
                    ax.imshow(images[j, 0].numpy(), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                changed = k == 1 and labels[j] != before_labels[j]
                ax.set_title(str(int(labels[j])), fontsize=7, color="red" if changed else "black", pad=2)
        axes[2 * i, 0].set_ylabel("original", fontsize=7)
        axes[2 * i + 1, 0].set_ylabel(title, fontsize=7)
    fig.subplots_adjust(hspace=0.45, wspace=0.05)
    return png(fig)


def confusions(matrices: list[tuple[str, torch.Tensor]], class_names: tuple[str, ...] = ()) -> bytes:
    """Side-by-side confusion matrices (rows: true class, columns: predicted), counts in the cells;
    the axes name the classes where `class_names` does (else their numbers)."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(WIDTH, 0.93 * WIDTH / len(matrices)), squeeze=False)
    for ax, (title, m) in zip(axes.flat, matrices):
        m = m.numpy()
        ax.imshow(m, cmap="Blues")
        for (i, j), count in np.ndenumerate(m):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=6,
                        color="white" if count > m.max() / 2 else "black")
        names = list(class_names) if len(class_names) == len(m) else [str(k) for k in range(len(m))]
        ax.set_xticks(range(len(m)), names, fontsize=6, rotation=90 if max(map(len, names)) > 2 else 0)
        ax.set_yticks(range(len(m)), names, fontsize=6)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=9)
    return png(fig)


def sweep_gains(keys: list[str], lines: list[tuple[tuple, int, str, dict]]) -> bytes:
    """Gain vs the first grid key, one line per client (and per value of the other keys), 95% CI bars."""
    series: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for values, client, _, line in lines:
        if "gain" in line:
            rest = ", ".join(f"{k}={v}" for k, v in zip(keys[1:], values[1:]))
            series[f"client {client}" + (f" ({rest})" if rest else "")].append((values[0], line["gain"]))
    x_labels = list(dict.fromkeys(values[0] for values, *_ in lines))
    fig, ax = plt.subplots(figsize=(WIDTH, 4.0))
    for name, points in series.items():
        xs = [x_labels.index(v) for v, _ in points]
        means = np.array([100 * g["mean"] for _, g in points])
        low = np.array([100 * (g["ci_low"] if g["ci_low"] is not None else g["mean"]) for _, g in points])
        high = np.array([100 * (g["ci_high"] if g["ci_high"] is not None else g["mean"]) for _, g in points])
        ax.errorbar(xs, means, yerr=[means - low, high - means], marker="o", capsize=4, label=name)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(x_labels)), x_labels)
    ax.set_xlabel(keys[0])
    ax.set_ylabel("gain, points of own-test accuracy")
    ax.set_title("federated − alone per client (bars: 95% CI over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)
