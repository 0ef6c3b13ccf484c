"""Your own data: `.npy` / `.npz` arrays and folders of PNG / JPEG images."""

import os
import pathlib
import warnings

import jax.numpy as jnp
import numpy as np

from ._dataset import Dataset


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataFileError(ValueError):
    """A data file or folder that cannot be used; the message names the path and
    what was expected."""


class DataConversionWarning(UserWarning):
    """Data that were converted on the way in (a folder of grey and colour images made
    all colour, 16-bit images reduced to 8 bits, transparency dropped); the message
    names the path and says how many examples were converted and how."""


def load_data(
    path: str | os.PathLike,
    *,
    data_range: tuple[float | int, float | int] | None = None,
    image_size: int | tuple[int, int] | None = None,
) -> Dataset:
    r"""A [`Dataset`][] from your own file or folder.

    - `.npy`: one array of examples. `.npz`: the examples under `x` and, optionally,
        integer labels under `y` (one per example).
    - a folder of PNG / JPEG images (`.png`, `.jpg`, `.jpeg`, read with Pillow; other
        files are ignored): every image of the same size, or resized to `image_size`;
        grey if every image is grey, else RGB; 16-bit images are reduced to 8 bits
        and transparency is dropped. A [`DataConversionWarning`][] says how many
        images were converted (grey ones made RGB beside colour ones, 16-bit ones,
        transparent ones). Labels are not read from folders.

    Shapes: `(n, d)` are vectors; `(n, C, H, W)` with `C` in 1-4 are channel-first
    images; `(n, H, W)` are grey images (a channel axis is added). Images become
    `[0, 1]` in data units (`uint8` arrays and image files are divided by 255 unless
    `data_range` is given) and
    `[-1, 1]` in model units (`scale=2`, `shift=-1`, as the embedded digits), with
    uniform dequantisation over 256 levels when they came as 8-bit values. Vectors stay
    in their own units (`scale=1`, `shift=0`), as the 2-D toys do.

    **Arguments:**

    - `path`: a `.npy` or `.npz` file, or a folder of images.
    - `data_range`: `(low, high)`: the range the stored values are in, mapped to
        `[-1, 1]` in model units (the values themselves stay the data units) (e.g. `(0, 255)` for float images in 0-255, or a box around
        vectors). Values outside it are refused. Default: images as above, vectors
        as they are.
    - `image_size`: resize folder images to this `(height, width)` (or a square side)
        with Pillow's bilinear filter. Default: images must all be the same size.

    **Returns:** a [`Dataset`][] named after the file (its `name` is the path, so a
    checkpoint records where its data came from).

    **Raises:** `DataFileError` (a `ValueError`) naming the path and what was
    expected: missing, unreadable, empty, ragged or non-finite data, bad labels,
    images of mixed sizes without `image_size`.
    """
    p = pathlib.Path(path)
    if not p.exists():
        raise DataFileError(f"{p}: no such file or folder")
    labels = None
    if p.is_dir():
        x = _read_image_folder(p, image_size)
    elif p.suffix == ".npy":
        x = _read_array(p, lambda: np.load(p, allow_pickle=False))
    elif p.suffix == ".npz":
        x, labels = _read_npz(p)
    else:
        raise DataFileError(
            f"{p}: expected a .npy or .npz file or a folder of PNG/JPEG images"
        )
    if image_size is not None and not p.is_dir():
        raise DataFileError(f"{p}: image_size applies to folders of images only")

    quantised = x.dtype == np.uint8
    if quantised and data_range is None:  # 8-bit values -> [0, 1]
        x = x.astype(np.float32) / 255.0
    elif x.dtype == bool or not np.issubdtype(x.dtype, np.number):
        raise DataFileError(f"{p}: expected numbers, got an array of {x.dtype}")
    x = np.asarray(x, np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim not in (2, 4) or (x.ndim == 4 and not 1 <= x.shape[1] <= 4):
        raise DataFileError(
            f"{p}: expected examples of shape (n, d) (vectors), (n, H, W) or "
            f"(n, C, H, W) with C in 1-4 (channel-first images), got {x.shape}"
        )
    if len(x) == 0:
        raise DataFileError(f"{p}: holds no examples")
    if not np.all(np.isfinite(x)):
        raise DataFileError(f"{p}: has NaN or infinite values")
    images = x.ndim == 4

    if data_range is not None:
        low, high = (float(v) for v in data_range)
        if not high > low:
            raise DataFileError(
                f"data_range must be (low, high) with high > low, got {data_range}"
            )
        if x.min() < low or x.max() > high:
            raise DataFileError(
                f"{p}: values span [{x.min():.4g}, {x.max():.4g}], outside "
                f"data_range ({low:g}, {high:g})"
            )
        scale = 2.0 / (high - low)
        shift = -1.0 - low * scale
    elif images:
        if x.min() < 0 or x.max() > 1:
            raise DataFileError(
                f"{p}: image values span [{x.min():.4g}, {x.max():.4g}]; images "
                "must be in [0, 1] (or uint8); give data_range (e.g. (0, 255))"
            )
        scale, shift = 2.0, -1.0
    else:
        scale, shift = 1.0, 0.0
    return Dataset(
        jnp.asarray(x),
        None if labels is None else jnp.asarray(labels),
        scale=scale,
        shift=shift,
        levels=256 if quantised and images and data_range is None else None,
        name=str(p),
    )


def _read_array(p: pathlib.Path, read) -> np.ndarray:
    try:
        x = read()
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise DataFileError(f"{p}: cannot be read as a NumPy array ({e})") from e
        # numpy's advice (allow_pickle=True) would run code from the file
        with open(p, "rb") as f:
            npy = f.read(6) == b"\x93NUMPY"
        if not npy:
            raise DataFileError(
                f"{p}: is not a NumPy .npy file (no .npy header); save the examples "
                "with np.save(path, array)"
            ) from e
        raise DataFileError(
            f"{p}: holds pickled Python objects, not an array of numbers; save the "
            "examples with np.save(path, array) of a numeric array"
        ) from e
    except Exception as e:  # numpy raises several kinds for a bad file
        raise DataFileError(f"{p}: cannot be read as a NumPy array ({e})") from e
    if x.dtype == object:
        raise DataFileError(f"{p}: holds a ragged or object array; expected numbers")
    return x


def _read_npz(p: pathlib.Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        archive = np.load(p, allow_pickle=False)
    except Exception as e:
        raise DataFileError(f"{p}: cannot be read as a NumPy .npz archive ({e})") from e
    with archive:
        if "x" not in archive.files:
            raise DataFileError(
                f"{p}: expected the examples under the key 'x' (and labels under "
                f"'y'), found keys {archive.files}"
            )
        x = _read_array(p, lambda: archive["x"])
        y = _read_array(p, lambda: archive["y"]) if "y" in archive.files else None
    if y is not None:
        if y.shape != x.shape[:1] or not np.issubdtype(y.dtype, np.integer):
            raise DataFileError(
                f"{p}: labels 'y' must be integers of shape ({len(x)},), one per "
                f"example, got {y.dtype} of shape {y.shape}"
            )
        if len(y) and y.min() < 0:
            raise DataFileError(f"{p}: labels 'y' must be >= 0, got {y.min()}")
        y = y.astype(np.int32)
    return x, y


def _read_image_folder(p: pathlib.Path, image_size) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataFileError(f"{p}: the folder has no .png, .jpg or .jpeg images")
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        if len(size) != 2 or min(size) < 1:
            raise DataFileError(
                f"image_size must be a side or (height, width) >= 1, got {image_size}"
            )
    pictures = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                pictures.append(im.copy())
        except (UnidentifiedImageError, OSError) as e:
            raise DataFileError(f"{f}: cannot be read as an image ({e})") from e
    grey = all(im.mode in _GREY_MODES for im in pictures)
    _warn_conversions(p, pictures, grey)
    arrays = []
    for im in pictures:
        if im.mode in _WIDE_MODES:  # 16 bits: to 8 (Pillow's convert would clip)
            wide = np.asarray(im, np.float64)
            im = Image.fromarray(np.clip(np.round(wide / 257), 0, 255).astype(np.uint8))
        im = im.convert("L" if grey else "RGB")
        if image_size is not None:
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        a = np.asarray(im, np.uint8)
        arrays.append(a[None] if grey else a.transpose(2, 0, 1))
    odd = next((i for i, a in enumerate(arrays) if a.shape != arrays[0].shape), None)
    if odd is not None:
        first, other = arrays[0].shape, arrays[odd].shape
        raise DataFileError(
            f"{p}: images of different sizes: {files[odd].name} is "
            f"{other[1]}x{other[2]}, {files[0].name} {first[1]}x{first[2]}; resize "
            "them with image_size (scoresde: --image-size N)"
        )
    return np.stack(arrays)


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit (and 32-bit) grey
_GREY_MODES = ("1", "L", "LA", *_WIDE_MODES)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _warn_conversions(p: pathlib.Path, pictures, grey: bool) -> None:
    """One `DataConversionWarning` saying how many images of the folder `p` are
    converted, and how (grey to RGB in a folder with colour images, 16 to 8 bits,
    transparency dropped); none if no image is."""
    n = len(pictures)
    counts = {
        "from grey to RGB (the grey level in every channel) to match the colour ones": (
            0 if grey else sum(im.mode in _GREY_MODES for im in pictures)
        ),
        "from 16 to 8 bits": sum(im.mode in _WIDE_MODES for im in pictures),
        "without their transparency (alpha channel dropped)": sum(
            im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info)
            for im in pictures
        ),
    }
    said = [f"{k} of the {n} images {how}" for how, k in counts.items() if k]
    if said:
        warnings.warn(
            f"{p}: converted " + "; ".join(said), DataConversionWarning, stacklevel=4
        )
