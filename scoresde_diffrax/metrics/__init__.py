from ._mixture import (
    mixture_report as mixture_report,
    MixtureReport as MixtureReport,
)
from ._sliced import sliced_wasserstein as sliced_wasserstein
