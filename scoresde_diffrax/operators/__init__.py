"""Linear measurement operators for inverse problems (`y = A(x) + noise`), on ONE
example in the model's units: super-resolution, Gaussian blur, masks (inpainting),
random projections; with the matrix of `A`, `A^+ y`, measurements with noise, and
the residuals and PSNR of a reconstruction. They feed [`Project`][scoresde_diffrax.Project]
(through the mask or the matrix) and [`DPS`][scoresde_diffrax.DPS] (through `apply`);
the `scoresde inverse` and `scoresde inpaint` commands are built on them."""

from ._masks import inpainting_mask as inpainting_mask, MASKS as MASKS
from ._operator import (
    blur_matrix as blur_matrix,
    check_operator_spec as check_operator_spec,
    gaussian_kernel as gaussian_kernel,
    make_operator as make_operator,
    measure as measure,
    Operator as Operator,
    OPERATORS as OPERATORS,
    psnr as psnr,
    residuals as residuals,
)
