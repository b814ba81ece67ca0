"""Small, structured stand-ins for MNIST that tests build themselves (no network, no ../shared).

Files have the real split sizes (60000/10000), as download verification demands, but compress to a
few hundred kB: each image is one of ten class templates, shifted by a few pixels.
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from typing import Self

import numpy as np

from latentfit.data.idx import SPLITS, write_idx


def synthetic_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    templates = np.zeros((10, 28, 28), dtype=np.uint8)
    for digit in range(10):
        t = np.random.default_rng(100 + digit)
        for _ in range(3):  # three strokes per class
            r, c = t.integers(6, 22, size=2)
            h, w = (t.integers(2, 10), 2) if t.random() < 0.5 else (2, t.integers(2, 10))
            templates[digit, r:r + h, c:c + w] = 255
        templates[digit, 4 + digit, 4:24] = 180
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    shifts = rng.integers(-2, 3, size=(count, 2))
    images = np.empty((count, 28, 28), dtype=np.uint8)
    for i, (label, (dy, dx)) in enumerate(zip(labels, shifts, strict=False)):
        images[i] = np.roll(templates[label], (dy, dx), axis=(0, 1))
    return images, labels


def write_synthetic_dataset(directory: str | Path, seed: int = 0) -> Path:
    directory = Path(directory)
    for i, (images_name, labels_name, count) in enumerate(SPLITS.values()):
        images, labels = synthetic_split(count, seed + i)
        write_idx(directory / images_name, images)
        write_idx(directory / labels_name, labels)
    return directory


class FileServer:
    """A real HTTP server on 127.0.0.1 serving one directory, in a background thread."""

    def __init__(self, directory: str | Path, handler: type = http.server.SimpleHTTPRequestHandler):
        class Quiet(handler):
            def log_message(self, *args):  # keep test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
