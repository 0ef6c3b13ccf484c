import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._custom_types import Scalar
from ._score import EpsScore, X0Score
from ._sde import AbstractSDE, VESDE, VPSDE


def _reduce(r: Array, reduce_mean: bool) -> Scalar:
    return jnp.mean(r**2) if reduce_mean else jnp.sum(r**2)


def _check_eps(eps, owner) -> None:
    if not (isinstance(eps, (int, float)) and 0 < eps < 1):
        raise ValueError(f"{owner}: `eps` must be a float in (0, 1), got {eps!r}.")


class AbstractLoss(eqx.Module):
    """A training loss for [`train`][]: `per_example(score, sde, x0, key)` on one
    example; `loss(score, sde, x0_batch, key)` averages it over a batch (one key per
    example, from `jax.random.split`).

    What `train` asks of every loss: `loss(model, sde, batch, key)`, the batch it
    trains on (`draw_batch`) and whether the model and data fit it (`check_model`).
    Subclass it with `per_example` for a score-matching loss on unlabelled data, or
    [`AbstractLabelledLoss`][] for one on labelled examples."""

    @abc.abstractmethod
    def per_example(
        self,
        score: Callable,
        sde: AbstractSDE,
        x0: Float[Array, "*shape"],
        key: PRNGKeyArray,
    ) -> Scalar:
        """The loss on one clean example `x0` with its own noise level and noise."""

    def __call__(
        self,
        score: Callable,
        sde: AbstractSDE,
        x0: Float[ArrayLike, " batch *shape"],
        key: PRNGKeyArray,
    ) -> Scalar:
        """Mean of `per_example` over the batch `x0`."""
        x0 = jnp.asarray(x0)
        keys = jr.split(key, x0.shape[0])
        per = jax.vmap(self.per_example, in_axes=(None, None, 0, 0))(
            score, sde, x0, keys
        )
        return jnp.mean(per)

    def draw_batch(self, data, key: PRNGKeyArray, batch_size: int) -> Array:
        """What one training step feeds the loss: `data.batch(key, batch_size)`, the
        examples in model units."""
        return data.batch(key, batch_size)

    def check_model(self, model: Callable, sde: AbstractSDE, data) -> None:
        """Raise `ValueError` naming `model` or `data` if they do not fit this loss
        (called by [`train`][] before compiling, nothing computed). Default: `model`
        maps one example of the data to the data's shape, and an `EpsScore` or
        `X0Score` adapter uses `sde`."""
        shape, dtype = data.data_shape, data.x.dtype
        x = jax.ShapeDtypeStruct(shape, dtype)
        t = jax.ShapeDtypeStruct((), dtype)
        try:
            out = eqx.filter_eval_shape(model, t, x)
        except Exception as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"`model` does not fit the data: examples of shape {shape} ({msg})."
            ) from e
        if getattr(out, "shape", None) != tuple(shape):
            raise ValueError(
                f"`model` returned shape {getattr(out, 'shape', type(out))} for an "
                f"example of shape {shape}; a score model must return its input's "
                "shape."
            )
        if isinstance(model, (EpsScore, X0Score)) and model.sde != sde:
            raise ValueError(
                f"`model`: its {type(model).__name__} adapter uses {model.sde}, but "
                f"`sde` is {sde}; they must be the same SDE."
            )


class AbstractLabelledLoss(AbstractLoss):
    """A training loss on labelled examples: `per_example(model, sde, x0, label,
    key)` on one example and its label (or condition); `loss(model, sde, (x0,
    labels), key)` averages it over a batch. [`train`][] draws labelled batches
    (`data.labelled_batch`) and refuses data without labels."""

    @abc.abstractmethod
    def per_example(  # pyright: ignore[reportIncompatibleMethodOverride]
        self,
        model: Callable,
        sde: AbstractSDE,
        x0: Float[Array, "*shape"],
        label: Array,
        key: PRNGKeyArray,
    ) -> Scalar:
        """The loss on one clean example `x0` with its label."""

    def __call__(  # pyright: ignore[reportIncompatibleMethodOverride]
        self,
        model: Callable,
        sde: AbstractSDE,
        batch: tuple[Float[ArrayLike, " batch *shape"], ArrayLike],
        key: PRNGKeyArray,
    ) -> Scalar:
        """Mean of `per_example` over a batch `(x0, labels)`."""
        x0, labels = jnp.asarray(batch[0]), jnp.asarray(batch[1])
        keys = jr.split(key, x0.shape[0])
        per = jax.vmap(self.per_example, in_axes=(None, None, 0, 0, 0))(
            model, sde, x0, labels, keys
        )
        return jnp.mean(per)

    def draw_batch(self, data, key: PRNGKeyArray, batch_size: int):
        """Examples (model units) and their labels: `data.labelled_batch`."""
        return data.labelled_batch(key, batch_size)

    def check_model(self, model: Callable, sde: AbstractSDE, data) -> None:
        """`data` must have labels; subclasses add what they need of the model."""
        del model, sde
        if data.labels is None:
            raise ValueError(
                f"`data`: training with {type(self).__name__} needs labels (a "
                "Dataset with `labels`, e.g. sd.data.digits())."
            )


class DSMLoss(AbstractLoss):
    r"""Continuous denoising score matching (Song et al. 2021, eq. 7):

    $$\mathcal{L} = \mathbb{E}_{t, x_0, z}\big[\lambda(t)\,
    \| s_\theta(t, a(t) x_0 + s(t) z) + z / s(t) \|^2\big],
    \quad t \sim U(\epsilon, T),\ z \sim \mathcal{N}(0, I),$$

    with $\lambda(t) = s(t)^2$ (default, the paper's `sigma^2` weighting: the summand is
    $\| s(t)\, s_\theta + z \|^2$) or, with `likelihood_weighting`, $\lambda = g(t)^2$,
    which makes the loss a bound on the negative log-likelihood (Song et al. 2021b).
    With `importance_sampling` as well, $t$ is drawn with density proportional to
    $g^2/s^2 = -\mathrm{d}\lambda_{\mathrm{SNR}}/\mathrm{d}t$ (uniform in the log-SNR,
    for every SDE here) and reweighted, which has the same expectation and a much
    smaller variance.

    **Arguments:**

    - `likelihood_weighting`: weight by $g(t)^2$ instead of $s(t)^2$. Default False.
    - `importance_sampling`: sample $t$ uniformly in log-SNR (needs
        `likelihood_weighting`). Default False.
    - `eps`: smallest time, in (0, 1). Default 1e-5 (the paper's).
    - `reduce_mean`: average the squared error over the example's dimensions (True,
        default) or sum it (False, the paper's likelihood-weighted setting).

    **Example:**

    ```python
    loss = sd.DSMLoss()(sd.EpsScore(net, sde), sde, x0_batch, key)
    ```

    **Reference:** Song et al., *Score-Based Generative Modeling through Stochastic
    Differential Equations*, ICLR 2021; Song, Durkan, Murray, Ermon, *Maximum Likelihood
    Training of Score-Based Diffusion Models*, NeurIPS 2021.
    """

    likelihood_weighting: bool = eqx.field(static=True, default=False)
    importance_sampling: bool = eqx.field(static=True, default=False)
    eps: float = eqx.field(static=True, default=1e-5)
    reduce_mean: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        _check_eps(self.eps, "DSMLoss")
        if self.importance_sampling and not self.likelihood_weighting:
            raise ValueError(
                "DSMLoss: `importance_sampling=True` needs `likelihood_weighting=True` "
                "(it samples t in proportion to the likelihood weight g^2 / s^2)."
            )

    def per_example(self, score, sde, x0, key):
        kt, kz = jr.split(key)
        x0 = jnp.asarray(x0)
        dtype = x0.dtype
        T = sde.T
        if self.importance_sampling:
            lam_hi = sde.log_snr(jnp.asarray(self.eps, dtype))
            lam_lo = sde.log_snr(jnp.asarray(T, dtype))
            u = jr.uniform(kt, (), dtype)
            t = sde.t_from_log_snr(lam_hi - u * (lam_hi - lam_lo))
            weight = (lam_hi - lam_lo) / (T - self.eps)
        else:
            t = jr.uniform(kt, (), dtype, minval=self.eps, maxval=T)
            weight = None
        z = jr.normal(kz, x0.shape, dtype)
        mean, std = sde.marginal(t, x0)
        s = jnp.asarray(score(t, mean + std * z))
        err = _reduce(std * s + z, self.reduce_mean)
        if self.likelihood_weighting and weight is None:
            weight = sde.diffusion(t) ** 2 / std**2
        return err if weight is None else weight * err


class SMLDLoss(AbstractLoss):
    r"""The discrete loss of SMLD / NCSN (Song & Ermon 2019) for a [`VESDE`][]:
    $N$ noise levels $\sigma_i$ geometric from $\sigma_\min$ to $\sigma_\max$, a level
    drawn uniformly, and $\| \sigma_i\, s_\theta(t_i, x_0 + \sigma_i z) + z \|^2$.

    The score is evaluated at the time $t_i$ where the VE marginal standard deviation
    $s(t_i) = \sqrt{\sigma(t_i)^2 - \sigma_\min^2}$ equals $\sigma_i$, so the exact
    score of the continuous model is also exact here.

    **Arguments:**

    - `num_scales`: number of noise levels $N$, >= 2. Default 1000.
    - `reduce_mean`: average (True, default) or sum over the dimensions.
    """

    num_scales: int = eqx.field(static=True, default=1000)
    reduce_mean: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if not isinstance(self.num_scales, int) or self.num_scales < 2:
            raise ValueError(
                f"SMLDLoss: `num_scales` must be an int >= 2, got {self.num_scales!r}."
            )

    def per_example(self, score, sde, x0, key):
        if not isinstance(sde, VESDE):
            raise ValueError(
                f"SMLDLoss: `sde` must be a VESDE (SMLD is its discretisation), got "
                f"{type(sde).__name__}; use DSMLoss or DDPMLoss (VPSDE)."
            )
        ki, kz = jr.split(key)
        x0 = jnp.asarray(x0)
        dtype = x0.dtype
        i = jr.randint(ki, (), 0, self.num_scales)
        log_ratio = jnp.log(sde.sigma_max / sde.sigma_min)
        sigma_i = sde.sigma_min * jnp.exp(log_ratio * i / (self.num_scales - 1))
        sigma_i = sigma_i.astype(dtype)
        # s(t)^2 = sigma(t)^2 - sigma_min^2 = sigma_i^2.
        sig_t = jnp.sqrt(sigma_i**2 + sde.sigma_min**2)
        t = jnp.minimum(sde.T * jnp.log(sig_t / sde.sigma_min) / log_ratio, sde.T)
        z = jr.normal(kz, x0.shape, dtype)
        s = jnp.asarray(score(t, x0 + sigma_i * z))
        return _reduce(sigma_i * s + z, self.reduce_mean)


class DDPMLoss(AbstractLoss):
    r"""The discrete loss of DDPM (Ho et al. 2020) for a [`VPSDE`][]: $N$ steps
    $\beta_i$ linear from $\beta_\min T/N$ to $\beta_\max T/N$,
    $\bar\alpha_i = \prod_{j \le i} (1 - \beta_j)$, a step drawn uniformly, and
    $\| \sqrt{1 - \bar\alpha_i}\, s_\theta(t_i, \sqrt{\bar\alpha_i} x_0 +
    \sqrt{1 - \bar\alpha_i} z) + z \|^2$, which is $\|\hat\epsilon - z\|^2$ for
    `sd.EpsScore(net, sde)`.

    The score is evaluated at the time $t_i$ where the VP marginal has the same
    signal-to-noise ratio, $a(t_i)^2 = \bar\alpha_i$, so the exact score of the
    continuous model is also exact here.

    **Arguments:**

    - `num_scales`: number of steps $N$, >= 2. Default 1000.
    - `reduce_mean`: average (True, default) or sum over the dimensions.
    """

    num_scales: int = eqx.field(static=True, default=1000)
    reduce_mean: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if not isinstance(self.num_scales, int) or self.num_scales < 2:
            raise ValueError(
                f"DDPMLoss: `num_scales` must be an int >= 2, got {self.num_scales!r}."
            )

    def per_example(self, score, sde, x0, key):
        if not isinstance(sde, VPSDE):
            raise ValueError(
                f"DDPMLoss: `sde` must be a VPSDE (DDPM is its discretisation), got "
                f"{type(sde).__name__}; use DSMLoss or SMLDLoss (VESDE)."
            )
        ki, kz = jr.split(key)
        x0 = jnp.asarray(x0)
        dtype = x0.dtype
        n = self.num_scales
        betas = jnp.linspace(sde.beta_min, sde.beta_max, n, dtype=dtype) * (sde.T / n)
        log_abar = jnp.cumsum(jnp.log1p(-betas))
        i = jr.randint(ki, (), 0, n)
        la = log_abar[i]
        abar_sqrt = jnp.exp(0.5 * la)
        std = jnp.sqrt(-jnp.expm1(la))
        t = sde.t_from_log_snr(la - jnp.log(-jnp.expm1(la)))
        z = jr.normal(kz, x0.shape, dtype)
        s = jnp.asarray(score(t, abar_sqrt * x0 + std * z))
        return _reduce(std * s + z, self.reduce_mean)


class ClassifierLoss(AbstractLabelledLoss):
    r"""The training loss of a noise-conditional classifier $p_t(y \mid x_t)$ (for
    [`ClassifierGuidance`][]): cross-entropy on noised data,

    $$\mathcal{L} = \mathbb{E}_{t, (x_0, y), z}\big[-\log \mathrm{softmax}(
    c_\phi(t, a(t) x_0 + s(t) z))_y\big], \quad t \sim U(\epsilon, T),$$

    the same noising as the score's [`DSMLoss`][], so a classifier trained with the
    same SDE pairs with the score model. Pass it to [`train`][] as `loss=`: training
    then draws labelled batches (the data set needs `labels`), and checkpoints, EMA
    and `resume` work as for score models.

    **Arguments:**

    - `eps`: smallest time, in (0, 1). Default 1e-5.

    **Reference:** Song et al., ICLR 2021, appendix I.1; Dhariwal & Nichol, NeurIPS
    2021.
    """

    eps: float = eqx.field(static=True, default=1e-5)

    def __check_init__(self):
        _check_eps(self.eps, "ClassifierLoss")

    def per_example(
        self,
        classifier: Callable,
        sde: AbstractSDE,
        x0: Float[Array, "*shape"],
        label: Array,
        key: PRNGKeyArray,
    ) -> Scalar:
        """Cross-entropy of one noised example with its label."""
        kt, kz = jr.split(key)
        x0 = jnp.asarray(x0)
        t = jr.uniform(kt, (), x0.dtype, minval=self.eps, maxval=sde.T)
        mean, std = sde.marginal(t, x0)
        logits = jnp.asarray(classifier(t, mean + std * jr.normal(kz, x0.shape)))
        return -jax.nn.log_softmax(logits)[label]

    def check_model(self, model: Callable, sde: AbstractSDE, data) -> None:
        """`data` has labels and `model(t, x)` gives one logit per class."""
        super().check_model(model, sde, data)
        x = jax.ShapeDtypeStruct(data.data_shape, data.x.dtype)
        t = jax.ShapeDtypeStruct((), data.x.dtype)
        try:
            out = eqx.filter_eval_shape(model, t, x)
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f"`model` does not fit the data: examples of shape {data.data_shape} "
                f"({type(e).__name__}: {e})."
            ) from e
        num = int(jnp.max(data.labels)) + 1
        shape = getattr(out, "shape", None)
        if shape is None or len(shape) != 1 or shape[0] < num:
            raise ValueError(
                f"`model` must return one logit per class, shape (num_classes,) with "
                f"num_classes >= {num} (the data's labels), got {shape}."
            )


class ConditionalDSMLoss(AbstractLabelledLoss):
    r"""Denoising score matching for a conditional score model, with condition
    dropping (classifier-free guidance training, Ho & Salimans 2021): [`DSMLoss`][]'s
    loss with $s_\theta(t, x_t, c)$, where each example's condition $c$ is replaced
    by the "no condition" token with probability `cond_drop`,

    $$\mathcal{L} = \mathbb{E}_{t, (x_0, c), z, b}\big[\lambda(t)\,
    \| s_\theta(t, a(t) x_0 + s(t) z, b\,?\,\varnothing : c) + z / s(t) \|^2\big],
    \quad b \sim \mathrm{Bernoulli}(p_\mathrm{drop}),$$

    so one network learns the conditional score (at $c$) and the unconditional one
    (at $\varnothing$), as [`ClassifierFreeGuidance`][] needs. Pass it to
    [`train`][] as `loss=`: training then draws labelled batches (the data set needs
    `labels`, e.g. `sd.data.digits()`); checkpoints, EMA and `resume` work as for
    other models.

    The model is called as `model(t, x, condition, drop=b)` on one example, `b` a
    (traced) boolean: a conditional `sd.nn` network (`num_classes` > 0), bare or in
    `sd.EpsScore`/`sd.X0Score`, or any callable with that signature. Called directly
    (`loss(model, sde, (x0, conditions), key)`) the conditions may also be context
    vectors `(batch, context_dim)`.

    **Arguments:**

    - `cond_drop`: the probability $p_\mathrm{drop}$ of dropping the condition, in
        `[0, 1)`. Default 0.1. (0: a purely conditional model, no guidance possible.)
    - `likelihood_weighting`: weight by $g(t)^2$ instead of $s(t)^2$. Default False.
    - `eps`: smallest time, in (0, 1). Default 1e-5.
    - `reduce_mean`: average the squared error over the example's dimensions (True,
        default) or sum it.

    **Raises:** `ValueError` naming `cond_drop` if it is outside `[0, 1)`.

    **Reference:** Ho & Salimans, *Classifier-Free Diffusion Guidance*,
    arXiv:2207.12598; Song et al., ICLR 2021 (the loss).
    """

    cond_drop: float = eqx.field(static=True, default=0.1)
    likelihood_weighting: bool = eqx.field(static=True, default=False)
    eps: float = eqx.field(static=True, default=1e-5)
    reduce_mean: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        _check_eps(self.eps, "ConditionalDSMLoss")
        p = self.cond_drop
        if isinstance(p, bool) or not (isinstance(p, (int, float)) and 0 <= p < 1):
            raise ValueError(
                f"ConditionalDSMLoss: `cond_drop` must be a probability in [0, 1), got "
                f"{p!r}."
            )

    def per_example(
        self,
        model: Callable,
        sde: AbstractSDE,
        x0: Float[Array, "*shape"],
        condition: Array,
        key: PRNGKeyArray,
    ) -> Scalar:
        """The loss on one clean example `x0` with its condition (a label or a
        context vector), its own noise level, noise and drop decision."""
        kt, kz, kd = jr.split(key, 3)
        x0 = jnp.asarray(x0)
        dtype = x0.dtype
        t = jr.uniform(kt, (), dtype, minval=self.eps, maxval=sde.T)
        z = jr.normal(kz, x0.shape, dtype)
        drop = jr.bernoulli(kd, self.cond_drop)
        mean, std = sde.marginal(t, x0)
        s = jnp.asarray(model(t, mean + std * z, condition, drop=drop))
        err = _reduce(std * s + z, self.reduce_mean)
        if self.likelihood_weighting:
            err = sde.diffusion(t) ** 2 / std**2 * err
        return err

    def check_model(self, model: Callable, sde: AbstractSDE, data) -> None:
        """`data` has labels, `model(t, x, label, drop=...)` returns the example's
        shape, and the labels fit the network's classes."""
        super().check_model(model, sde, data)
        num = int(jnp.max(data.labels)) + 1
        for owner in (model, getattr(model, "model", None)):
            k = getattr(getattr(owner, "config", None), "num_classes", None)
            if isinstance(k, int):
                if k < num:
                    raise ValueError(
                        f"`model` has num_classes={k}, but the labels of `data` go up "
                        f"to {num - 1}: build it with num_classes >= {num}."
                    )
                break
        x = jax.ShapeDtypeStruct(data.data_shape, data.x.dtype)
        t = jax.ShapeDtypeStruct((), data.x.dtype)
        c = jax.ShapeDtypeStruct((), data.labels.dtype)
        try:
            out = eqx.filter_eval_shape(
                lambda m, t, x, c: m(t, x, c, drop=jnp.asarray(False)), model, t, x, c
            )
        except Exception as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                "`model` must be a conditional model, model(t, x, label, drop=...), "
                f"for examples of shape {data.data_shape} ({msg})."
            ) from e
        if getattr(out, "shape", None) != tuple(data.data_shape):
            raise ValueError(
                f"`model` returned shape {getattr(out, 'shape', type(out))} for an "
                f"example of shape {data.data_shape}; a score model must return its "
                "input's shape."
            )
