"""Embedded data sets (nothing downloads): 2-D toys, scikit-learn's digits, coloured
digits; your own arrays and image folders ([`load_data`][]); scaling and uniform
dequantisation through [`Dataset`][]."""

from ._dataset import Dataset as Dataset, dataset_from_array as dataset_from_array
from ._digits import (
    colored_digits as colored_digits,
    digits as digits,
    digits_array as digits_array,
)
from ._files import (
    DataConversionWarning as DataConversionWarning,
    DataFileError as DataFileError,
    load_data as load_data,
)
from ._toy import (
    checkerboard as checkerboard,
    gaussian_mixture as gaussian_mixture,
    moons as moons,
    rings as rings,
    swiss_roll as swiss_roll,
    toy_mixture as toy_mixture,
)
