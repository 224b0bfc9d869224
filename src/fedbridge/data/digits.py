"""The offline fallback: scikit-learn's bundled 8x8 handwritten digits, split the same way everywhere."""

from __future__ import annotations

import numpy as np

SOURCE = "scikit-learn's bundled 8x8 digits"


def load() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train images, train labels, test images, test labels: uint8 [N, 8, 8] scaled to 0-255, int64 [N]."""
    from sklearn.datasets import load_digits  # slow import; only this path needs it

    bunch = load_digits()
    images = (bunch.images.astype(np.int64) * 255 // 16).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    # Fixed split, no shuffling: the same 1,437 / 360 images on every machine.
    return images[:1437], labels[:1437], images[1437:], labels[1437:]
