from .learn import learn_time_grid as learn_time_grid
from .result import LearnedGrid as LearnedGrid
