"""A minimal PNG writer (zlib + struct, no imaging dependency) and image grids."""

import math
import os
import struct
import zlib

import numpy as np


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an 8-bit grayscale `(H, W)` or RGB `(H, W, 3)` image (uint8, or float in
    `[0, 1]`) as a PNG file."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if img.ndim == 2:
        color = 0
    elif img.ndim == 3 and img.shape[2] == 3:
        color = 2
    else:
        raise ValueError(f"`image` must be (H, W) or (H, W, 3), got {img.shape}.")
    h, w = img.shape[:2]
    raw = b"".join(b"\x00" + img[i].tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    with open(path, "wb") as f:
        f.write(png)


def image_grid(
    images: np.ndarray, *, ncols: int | None = None, zoom: int = 4, pad: int = 1
) -> np.ndarray:
    """Tile images `(n, C, H, W)` in `[0, 1]` (C = 1 or 3) into one `(H', W')` or
    `(H', W', 3)` image, each enlarged `zoom` times (nearest), with `pad` pixels of
    mid-grey between them."""
    x = np.clip(np.asarray(images, np.float32), 0, 1)
    n, c, h, w = x.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    x = x.repeat(zoom, axis=2).repeat(zoom, axis=3)
    h, w = h * zoom, w * zoom
    grid = np.full(
        (c, nrows * (h + pad) + pad, ncols * (w + pad) + pad), 0.5, np.float32
    )
    for i in range(n):
        r, q = divmod(i, ncols)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, y0 : y0 + h, x0 : x0 + w] = x[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def scatter_image(
    points: np.ndarray, *, size: int = 256, lim: float | None = None
) -> np.ndarray:
    """A 2-D histogram of points `(n, 2)` as a grey image (dark = dense)."""
    p = np.asarray(points, np.float64)
    lim = lim or float(np.quantile(np.abs(p), 0.995)) * 1.1 or 1.0
    hist, _, _ = np.histogram2d(
        p[:, 1], p[:, 0], bins=size, range=[[-lim, lim], [-lim, lim]]
    )
    hist = hist[::-1]
    return 1.0 - np.sqrt(hist / max(hist.max(), 1.0))
