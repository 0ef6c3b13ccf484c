"""Pictures of samples: image grids (Pillow) and 2-D scatter plots (matplotlib).

Both libraries are imported when a picture is made, not with the package.
"""

import math
import os

import numpy as np


# A cell of an image grid is enlarged (nearest neighbour) to at least this many pixels
# on its shorter side, so that an 8x8 digit is readable.
MIN_CELL = 48


def image_grid(
    images: np.ndarray,
    *,
    ncols: int | None = None,
    zoom: int | None = None,
    pad: int = 2,
) -> np.ndarray:
    """Tile images `(n, C, H, W)` in `[0, 1]` (C = 1 or 3) into one `(H', W')` or
    `(H', W', 3)` array, each enlarged `zoom` times by nearest neighbour (default: the
    smallest factor that makes a cell at least `MIN_CELL` pixels), with `pad` pixels of
    mid-grey between them; `ncols` columns (default: a square)."""
    x = np.clip(np.asarray(images, np.float32), 0, 1)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"`images` must be (n >= 1, 1 or 3, H, W), got {x.shape}.")
    n, c, h, w = x.shape
    zoom = zoom or max(1, math.ceil(MIN_CELL / min(h, w)))
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


def save_image(
    path: str | os.PathLike, image: np.ndarray, *, title: str | None = None
) -> None:
    """Write a grey `(H, W)` or RGB `(H, W, 3)` image (uint8, or floats in `[0, 1]`),
    with `title` in a white band above it if given; the format follows the suffix
    (Pillow)."""
    from PIL import Image

    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"`image` must be (H, W) or (H, W, 3), got {img.shape}.")
    picture = Image.fromarray(img).convert("RGB")
    _titled(picture, title).save(path)


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _titled(picture, title: str | None):
    """`picture` (Pillow, RGB) under `title` in a white band, widened if the title is
    wider."""
    from PIL import Image, ImageDraw

    if not title:
        return picture
    font = _font()
    draw = ImageDraw.Draw(picture)
    left, top, right, bottom = draw.textbbox((0, 0), title, font=font)
    band = bottom - top + 8
    width = max(picture.width, right - left + 8)
    titled = Image.new("RGB", (width, picture.height + band), "white")
    titled.paste(picture, (0, band))
    ImageDraw.Draw(titled).text((4, 4 - top), title, fill="black", font=font)
    return titled


def save_rows(
    path: str | os.PathLike,
    groups,
    names,
    *,
    per_row: int = 8,
    title: str | None = None,
    pad: int = 2,
) -> None:
    """Write groups of images side by side, one row per group, each row named on its
    left: for an observation, a result and the truth, a reader sees which is which.

    `groups` are arrays `(n, C, H, W)` in `[0, 1]` with the same `n` (C = 1 or 3; grey
    ones are shown in colour beside colour ones), `names` their names. The examples
    go in columns, `per_row` to a block of rows (one row per group); the blocks are
    stacked under `title`. Cells are enlarged as in `image_grid`."""
    from PIL import Image, ImageDraw

    c = max(g.shape[1] for g in groups)
    groups = [
        np.broadcast_to(np.asarray(g, np.float32), (g.shape[0], c, *g.shape[2:]))
        for g in groups
    ]
    n, h, w = groups[0].shape[0], *groups[0].shape[2:]
    if len(names) != len(groups) or any(g.shape != groups[0].shape for g in groups):
        raise ValueError("`groups` must be arrays of one shape, one name each.")
    zoom = max(1, math.ceil(MIN_CELL / min(h, w)))
    ncols = min(per_row, n)
    blank = np.full((1, c, h, w), 0.5, np.float32)
    blocks = []
    for start in range(0, n, ncols):
        tiles = []
        for g in groups:  # a row each, blank cells after the last example
            part = g[start : start + ncols]
            tiles += [part] + [blank] * (ncols - len(part))
        grid = image_grid(np.concatenate(tiles), ncols=ncols, zoom=zoom, pad=pad)
        blocks.append(Image.fromarray((grid * 255 + 0.5).astype(np.uint8)))
    font = _font()
    measure = ImageDraw.Draw(blocks[0])
    boxes = [measure.textbbox((0, 0), name, font=font) for name in names]
    margin = max(right - left for left, _, right, _ in boxes) + 10
    gap = 3 * pad + 4
    height = sum(b.height for b in blocks) + gap * (len(blocks) - 1)
    picture = Image.new("RGB", (margin + blocks[0].width, height), "white")
    draw = ImageDraw.Draw(picture)
    y = 0
    for block in blocks:
        picture.paste(block.convert("RGB"), (margin, y))
        for r, (name, (_, top, _, bottom)) in enumerate(zip(names, boxes, strict=True)):
            middle = y + pad + r * (h * zoom + pad) + h * zoom // 2
            draw.text((4, middle - (top + bottom) // 2), name, fill="black", font=font)
        y += block.height + gap
    _titled(picture, title).save(path)


def save_scatter(
    path: str | os.PathLike,
    points: np.ndarray,
    *,
    reference: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    title: str | None = None,
    max_points: int = 5000,
) -> None:
    """A scatter plot of 2-D `points` `(n, 2)` with axes, over `reference` points (the
    training data, in grey) if given, on equal axes that hold both; the points are
    coloured by their `labels` (integers, one per point) if given, with a legend
    entry per label; at most `max_points` of each are drawn (matplotlib, Agg
    backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = np.asarray(points, np.float64)[:max_points]
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"`points` must be (n, 2), got {p.shape}.")
    fig, ax = plt.subplots(figsize=(5, 5))
    try:
        if reference is not None:
            r = np.asarray(reference, np.float64)[:max_points]
            ax.scatter(*r.T, s=2, c="0.7", alpha=0.6, label=f"data ({len(r)})")
        if labels is None:
            ax.scatter(*p.T, s=2, c="tab:blue", alpha=0.6, label=f"samples ({len(p)})")
        else:
            lab = np.asarray(labels)[: len(p)]
            for k in np.unique(lab):
                q = p[lab == k]
                ax.scatter(*q.T, s=2, alpha=0.6, label=f"label {k} ({len(q)})")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.legend(loc="upper right", markerscale=4, fontsize=8)
        if title:
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
