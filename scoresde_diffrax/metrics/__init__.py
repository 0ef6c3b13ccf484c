from ._fd import (
    cache_dir as cache_dir,
    digits_accuracy as digits_accuracy,
    digits_classifier as digits_classifier,
    digits_features as digits_features,
    DigitsClassifier as DigitsClassifier,
    fd_digits as fd_digits,
    fd_digits_floor as fd_digits_floor,
    fd_digits_with_se as fd_digits_with_se,
    frechet_distance as frechet_distance,
)
from ._mixture import (
    mixture_report as mixture_report,
    MixtureReport as MixtureReport,
)
from ._sliced import sliced_wasserstein as sliced_wasserstein
