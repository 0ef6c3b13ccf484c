from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from ._custom_types import ScalarLike
from ._sde import AbstractSDE


def _call(model, t, x, condition, drop):
    """`model(t, x)`, or for a conditional model `model(t, x, condition, drop=drop)`
    (unconditional models are called without a condition)."""
    if condition is None and drop is False:
        return model(t, x)
    return model(t, x, condition, drop=drop)


def _check_adapter(adapter) -> None:
    name = type(adapter).__name__
    if not callable(adapter.model):
        raise TypeError(
            f"{name}: `model` must be callable as model(t, x), got "
            f"{type(adapter.model).__name__}."
        )
    if not isinstance(adapter.sde, AbstractSDE):
        raise TypeError(
            f"{name}: `sde` must be an AbstractSDE (sd.VPSDE(), ...), got "
            f"{type(adapter.sde).__name__}."
        )


class EpsScore(eqx.Module):
    r"""Turns a noise-predicting model into a score: $s(t, x) = -\hat\epsilon(t, x) / s(t)$.

    **Arguments:**

    - `model`: called as `model(t, x)` on one example; predicts the standard normal
        noise $\epsilon$ in $x_t = a(t) x_0 + s(t) \epsilon$.
    - `sde`: the forward SDE the model was trained for (gives $s(t)$).

    Called as `score(t, x)`, or for a conditional model (e.g. `sd.nn.MLPScore(...,
    num_classes=K)`) as `score(t, x, condition, drop=False)`, both passed on to
    `model`.
    """

    model: Callable
    sde: AbstractSDE

    def __check_init__(self):
        _check_adapter(self)

    def __call__(
        self,
        t: ScalarLike,
        x: Float[ArrayLike, "*shape"],
        condition: ArrayLike | None = None,
        *,
        drop: bool | Bool[ArrayLike, ""] = False,
    ) -> Float[Array, "*shape"]:
        out = _call(self.model, t, x, condition, drop)
        return -jnp.asarray(out) / self.sde.std(t)


class X0Score(eqx.Module):
    r"""Turns a data-predicting (denoising) model into a score:
    $s(t, x) = (a(t)\,\hat x_0(t, x) - x) / s(t)^2$.

    **Arguments:**

    - `model`: called as `model(t, x)` on one example; predicts $\mathbb{E}[x_0 | x_t]$.
    - `sde`: the forward SDE the model was trained for.

    Called as `score(t, x)`, or for a conditional model as
    `score(t, x, condition, drop=False)`, both passed on to `model`.
    """

    model: Callable
    sde: AbstractSDE

    def __check_init__(self):
        _check_adapter(self)

    def __call__(
        self,
        t: ScalarLike,
        x: Float[ArrayLike, "*shape"],
        condition: ArrayLike | None = None,
        *,
        drop: bool | Bool[ArrayLike, ""] = False,
    ) -> Float[Array, "*shape"]:
        x = jnp.asarray(x)
        x0 = jnp.asarray(_call(self.model, t, x, condition, drop))
        return (self.sde.mean_coeff(t) * x0 - x) / self.sde.std(t) ** 2
