from .base import AbstractSDE as AbstractSDE
from .subvp import SubVPSDE as SubVPSDE
from .ve import VESDE as VESDE
from .vp import VPSDE as VPSDE
