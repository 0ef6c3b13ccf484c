"""Pictures of samples: image grids at a readable size, titles, 2-D scatter plots."""

import numpy as np
import pytest
from PIL import Image

from scoresde_diffrax._pictures import image_grid, MIN_CELL, save_image, save_scatter


def test_image_grid_enlarges_and_tiles_exactly():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(5, 1, 8, 8)).astype(np.float32)
    grid = image_grid(x, ncols=3, pad=2)
    zoom = MIN_CELL // 8
    cell = 8 * zoom
    assert grid.shape == (2 * (cell + 2) + 2, 3 * (cell + 2) + 2)
    # Example 4 sits in row 1, column 1; nearest-neighbour blocks of `zoom` pixels.
    y0, x0 = 2 + (cell + 2), 2 + (cell + 2)
    block = grid[y0 : y0 + cell, x0 : x0 + cell]
    np.testing.assert_array_equal(block[::zoom, ::zoom], x[4, 0])
    np.testing.assert_array_equal(block, x[4, 0].repeat(zoom, 0).repeat(zoom, 1))
    assert grid[0, 0] == 0.5 and grid[-1, -1] == 0.5  # padding, and the empty cell
    rgb = image_grid(rng.uniform(size=(4, 3, 8, 8)))
    assert rgb.shape[2] == 3 and rgb.shape[0] == rgb.shape[1]
    with pytest.raises(ValueError, match="images"):
        image_grid(np.zeros((4, 2, 8, 8)))


def test_save_image_writes_the_pixels_and_a_title_band(tmp_path):
    img = np.linspace(0, 1, 48 * 64).reshape(48, 64)
    save_image(tmp_path / "a.png", img)
    back = np.asarray(Image.open(tmp_path / "a.png").convert("L"))
    np.testing.assert_array_equal(back, (img * 255 + 0.5).astype(np.uint8))
    save_image(tmp_path / "b.png", img, title="model: solver, 10 score evaluations")
    titled = np.asarray(Image.open(tmp_path / "b.png").convert("L"))
    band = titled.shape[0] - 48
    assert band > 10 and titled.shape[1] >= 64
    np.testing.assert_array_equal(titled[band:, :64], back)
    assert titled[:band].min() < 128  # the title's text is drawn
    with pytest.raises(ValueError, match="image"):
        save_image(tmp_path / "c.png", np.zeros((4, 4, 2)))


def test_save_scatter_writes_a_plot(tmp_path):
    rng = np.random.default_rng(1)
    save_scatter(
        tmp_path / "s.png",
        rng.normal(size=(300, 2)),
        reference=rng.normal(size=(500, 2)),
    )
    pic = np.asarray(Image.open(tmp_path / "s.png").convert("RGB"))
    assert pic.shape[0] >= 400 and pic.shape[1] >= 400
    blue = (pic[..., 2] > 150) & (pic[..., 0] < 100)
    assert blue.sum() > 100  # the samples are drawn
    with pytest.raises(ValueError, match="points"):
        save_scatter(tmp_path / "t.png", np.zeros((10, 3)))
