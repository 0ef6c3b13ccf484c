from ._mixture import (
    mixture_report as mixture_report,
    MixtureReport as MixtureReport,
)
