import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._checks import check_mask
from ._custom_types import Scalar, ScalarLike
from ._scalars import check_int, check_nonnegative, is_concrete
from ._sde import AbstractSDE


# The oracle must be exact on every backend: GPUs default to reduced-precision (TF32)
# float32 contractions, which cost ~1e-4 nats per dimension in likelihood tests.
_EXACT = jax.lax.Precision.HIGHEST


class AbstractMixture(eqx.Module):
    r"""A mixture of Gaussians, $p(x) = \sum_k w_k\, \mathcal{N}(x;\ \mu_k,\ \Sigma_k)$:
    exact ground truth.

    A linear SDE maps it to another mixture: with mean coefficient $a(t)$ and standard
    deviation $s(t)$, component $k$ of $p_t$ is
    $\mathcal{N}(a(t)\mu_k, a(t)^2 \Sigma_k + s(t)^2 I)$. So the score, the
    log-density and the component posterior of every marginal are known in closed
    form, in any dimension: the oracle every sampler and likelihood in the package is
    tested against.

    Everything that holds for any covariance is here: sampling, the log-density and
    its gradient, the component posterior, the marginals under an SDE, the exact score
    and classifier, the posterior given a linear observation, the mean and the
    covariance. The final subclasses, [`GaussianMixture`][] (diagonal covariances) and
    [`FullCovarianceMixture`][] (full ones), hold the covariances and supply what
    depends on their form. All methods act on ONE point; batch them with `jax.vmap`.
    """

    means: eqx.AbstractVar[Float[Array, "K D"]]
    weights: eqx.AbstractVar[Float[Array, " K"]]

    # What depends on the form of the covariances.

    @abc.abstractmethod
    def component_covariances(self) -> Float[Array, "K D D"]:
        """The covariance matrix $\\Sigma_k$ of every component, shape `(K, D, D)`."""

    @abc.abstractmethod
    def _noise(
        self, k: Int[Array, " n"], z: Float[Array, "n D"]
    ) -> Float[Array, "n D"]:
        """`z` (standard normals) scaled by a square root of $\\Sigma_{k_i}$, row by
        row."""

    @abc.abstractmethod
    def _log_normal_terms(
        self, x: Float[Array, " D"]
    ) -> tuple[Float[Array, " K"], Float[Array, " K"]]:
        """The two terms of $-\\log \\mathcal{N}(x; \\mu_k, \\Sigma_k)$ for every $k$:
        half the squared Mahalanobis distance, and the log-normaliser
        $\\tfrac12 \\log\\det(2\\pi\\Sigma_k)$, subtracted from $\\log w_k$ in this
        order (grouped otherwise, the score rounded differently under batch sharding:
        tests/test_sharding.py)."""

    @abc.abstractmethod
    def _component_scores(self, x: Float[Array, " D"]) -> Float[Array, "K D"]:
        """$\\Sigma_k^{-1} (\\mu_k - x)$ for every $k$."""

    @abc.abstractmethod
    def _pushed(self, a: Scalar, s: Scalar) -> "AbstractMixture":
        """This mixture with means $a \\mu_k$ and covariances
        $a^2 \\Sigma_k + s^2 I$."""

    # The rest, for any covariance.

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n D"]:
        """Draw `n` independent samples, shape `(n, D)`."""
        return self.sample_with_labels(key, n)[0]

    def sample_with_labels(
        self, key: PRNGKeyArray, n: int
    ) -> tuple[Float[Array, "n D"], Int[Array, " n"]]:
        """`n` independent samples `(n, D)` and their component indices `(n,)`."""
        n = check_int("n", n, owner=f"{type(self).__name__}.sample")
        ckey, nkey = jr.split(key)
        k = jr.choice(ckey, self.num_components, (n,), p=self.weights)
        z = jr.normal(nkey, (n, self.dim), dtype=self.means.dtype)
        return self.means[k] + self._noise(k, z), k

    def component_log_probs(self, x: Float[ArrayLike, " D"]) -> Float[Array, " K"]:
        """$\\log w_k + \\log \\mathcal{N}(x; \\mu_k, \\Sigma_k)$ for every $k$
        (a singular covariance has no density)."""
        x = jnp.asarray(x, dtype=self.means.dtype)
        if x.shape != (self.dim,):
            raise ValueError(
                f"{type(self).__name__}: `x` must be one point of shape ({self.dim},), "
                f"got {x.shape}; use jax.vmap for a batch."
            )
        half_sq, log_norm = self._log_normal_terms(x)
        return jnp.log(self.weights) - half_sq - log_norm

    def log_prob(self, x: Float[ArrayLike, " D"]) -> Scalar:
        """Exact log-density at one point (`jax.vmap` for many)."""
        return jax.nn.logsumexp(self.component_log_probs(x))

    def responsibilities(self, x: Float[ArrayLike, " D"]) -> Float[Array, " K"]:
        """Posterior probability of each component given one point."""
        return jax.nn.softmax(self.component_log_probs(x))

    def classify(self, x: Float[ArrayLike, " D"]) -> Int[Array, ""]:
        """Index of the most probable component for one point."""
        return jnp.argmax(self.component_log_probs(x))

    def grad_log_prob(self, x: Float[ArrayLike, " D"]) -> Float[Array, " D"]:
        """Exact $\\nabla_x \\log p(x)$ at one point, in closed form."""
        x = jnp.asarray(x, dtype=self.means.dtype)
        r = self.responsibilities(x)
        per_component = self._component_scores(x)
        return jnp.einsum("k,kd->d", r, per_component, precision=_EXACT)

    def marginal(self, sde: AbstractSDE, t: ScalarLike) -> "AbstractMixture":
        """The exact marginal $p_t$ of this mixture pushed through `sde` (a mixture of
        the same kind)."""
        a = sde.mean_coeff(t).astype(self.means.dtype)
        s = sde.std(t).astype(self.means.dtype)
        return self._pushed(a, s)

    def score(self, sde: AbstractSDE) -> "MixtureScore":
        """The exact score $(t, x) \\mapsto \\nabla_x \\log p_t(x)$ under `sde`, usable
        wherever the package takes a score."""
        return MixtureScore(self, sde)

    def classifier(self, sde: AbstractSDE) -> "MixtureClassifier":
        """The exact noise-conditional classifier $(t, x) \\mapsto \\log p_t(k \\mid x)$
        (the log-posterior of the components under `sde`'s marginals), usable wherever
        the package takes a classifier (e.g. [`ClassifierGuidance`][])."""
        return MixtureClassifier(self, sde)

    def condition(
        self,
        operator: ArrayLike,
        y: ArrayLike,
        sigma_y: ScalarLike = 0.0,
    ) -> "FullCovarianceMixture":
        r"""The exact posterior $p(x \mid y)$ for the observation
        $y = A x + \sigma_y n$, $n \sim \mathcal{N}(0, I)$: a
        [`FullCovarianceMixture`][] (components are Gaussian, reweighted by their
        evidence $\mathcal{N}(y; A\mu_k, A\Sigma_k A^\top + \sigma_y^2 I)$).

        **Arguments:**

        - `operator`: the matrix $A$, shape `(M, D)`.
        - `y`: the observation, shape `(M,)`.
        - `sigma_y`: the observation noise, >= 0. With 0 the posterior is degenerate
            (supported on $A x = y$): `sample`, `mean`, `covariance`, `marginal` and
            `score` work, `log_prob` does not (no density). For an exact observation
            of some coordinates, [`GaussianMixture.condition_on_coordinates`][] gives
            the posterior of the others as a (diagonal) `GaussianMixture`.

        **Raises:** `ValueError` naming `operator`, `y` or `sigma_y` for shapes that
        do not match or a negative `sigma_y`.
        """
        covs = self.component_covariances()
        return _condition(self.means, covs, self.weights, operator, y, sigma_y)

    def mean(self) -> Float[Array, " D"]:
        """Mean of the mixture."""
        return jnp.einsum("k,kd->d", self.weights, self.means, precision=_EXACT)

    def covariance(self) -> Float[Array, "D D"]:
        """Covariance matrix of the mixture."""
        m = self.mean()
        second = jnp.einsum(
            "k,kd,ke->de", self.weights, self.means, self.means, precision=_EXACT
        )
        covs = self.component_covariances()
        second = second + jnp.einsum("k,kde->de", self.weights, covs, precision=_EXACT)
        return second - jnp.outer(m, m)


def _means_and_weights(owner: str, means, weights) -> tuple[Array, Array]:
    """`means` `(K, D)` (floating) and `weights` `(K,)` (uniform if None) as arrays,
    the shapes checked; a `ValueError` names `owner`."""
    means = jnp.asarray(means)
    if not jnp.issubdtype(means.dtype, jnp.floating):
        means = means.astype(jnp.result_type(float))
    if means.ndim != 2:
        raise ValueError(f"{owner}: `means` must have shape (K, D), got {means.shape}.")
    k = means.shape[0]
    if weights is None:
        weights = jnp.full((k,), 1.0 / k, dtype=means.dtype)
    weights = jnp.asarray(weights, dtype=means.dtype)
    if weights.shape != (k,):
        raise ValueError(
            f"{owner}: `weights` must have shape (K,) = ({k},) to match `means` "
            f"{means.shape}, got {weights.shape}."
        )
    return means, weights


def _check_values(owner: str, weights, **arrays) -> None:
    """Concrete values (on the host: no compilation for a check): every array finite,
    every weight > 0."""
    for name, v in (*arrays.items(), ("weights", weights)):
        if not np.all(np.isfinite(np.asarray(v))):
            raise ValueError(f"{owner}: `{name}` must be finite.")
    if not np.all(np.asarray(weights) > 0):
        raise ValueError(
            f"{owner}: `weights` must all be > 0 (they are normalised to sum to 1; "
            "drop a component instead of giving it weight 0)."
        )


class GaussianMixture(AbstractMixture):
    r"""A mixture of Gaussians with diagonal covariances: exact ground truth (an
    [`AbstractMixture`][]),

    $$p(x) = \sum_k w_k\, \mathcal{N}(x;\ \mu_k,\ \mathrm{diag}(\sigma_k^2)).$$

    Its marginals under a linear SDE are again diagonal: component $k$ of $p_t$ is
    $\mathcal{N}(a(t)\mu_k, a(t)^2 \sigma_k^2 + s(t)^2)$.

    **Arguments:**

    - `means`: component means, shape `(K, D)`.
    - `stds`: component standard deviations, shape `(K,)` (isotropic) or `(K, D)`
        (diagonal); all > 0.
    - `weights`: mixture weights, shape `(K,)`, all > 0; normalised here. Default:
        uniform.

    **Example:**

    ```python
    mix = sd.GaussianMixture(jnp.array([[-2.0, 0.0], [2.0, 0.0]]), jnp.array([0.3, 0.5]))
    x = mix.sample(jr.key(0), 1000)            # (1000, 2)
    logp = jax.vmap(mix.log_prob)(x)           # (1000,)
    score = mix.score(sd.VPSDE())              # score(t, x) of p_t, exact
    ```
    """

    means: Float[Array, "K D"]
    stds: Float[Array, "K D"]
    weights: Float[Array, " K"]

    def __init__(
        self,
        means: ArrayLike,
        stds: ArrayLike,
        weights: ArrayLike | None = None,
    ):
        means, weights = _means_and_weights("GaussianMixture", means, weights)
        k, d = means.shape
        stds = jnp.asarray(stds, dtype=means.dtype)
        if stds.shape == (k,):
            stds = jnp.broadcast_to(stds[:, None], (k, d))
        elif stds.shape != (k, d):
            raise ValueError(
                "GaussianMixture: `stds` must have shape (K,) or (K, D) = "
                f"({k},) or ({k}, {d}) to match `means` {means.shape}, got {stds.shape}."
            )
        if is_concrete(means, stds, weights):
            _check_values("GaussianMixture", weights, means=means, stds=stds)
            if not np.all(np.asarray(stds) > 0):
                raise ValueError("GaussianMixture: `stds` must all be > 0.")
        self.means = means
        self.stds = stds
        self.weights = weights / jnp.sum(weights)

    def component_covariances(self) -> Float[Array, "K D D"]:
        return jax.vmap(jnp.diag)(self.stds**2)

    def _noise(self, k, z):
        return self.stds[k] * z

    def _log_normal_terms(self, x):
        z = (x[None, :] - self.means) / self.stds
        log_norm = jnp.sum(jnp.log(self.stds), axis=-1) + 0.5 * self.dim * math.log(
            2 * math.pi
        )
        return 0.5 * jnp.sum(z**2, axis=-1), log_norm

    def _component_scores(self, x):
        return (self.means - x[None, :]) / self.stds**2

    def _pushed(self, a, s):
        stds = jnp.sqrt((a * self.stds) ** 2 + s**2)
        return eqx.tree_at(lambda m: (m.means, m.stds), self, (a * self.means, stds))

    def condition_on_coordinates(
        self, mask: ArrayLike, x: ArrayLike
    ) -> "GaussianMixture":
        r"""The exact posterior of the unobserved coordinates given the observed ones,
        $p(x_{\bar\Omega} \mid x_\Omega)$, as a `GaussianMixture` over the
        unobserved coordinates (in their order). Within a component the coordinates
        are independent, so only the weights change:
        $w_k' \propto w_k \prod_{j \in \Omega} \mathcal{N}(x_j; \mu_{kj}, \sigma_{kj}^2)$.

        **Arguments:**

        - `mask`: which coordinates are observed, shape `(D,)`, boolean or 0/1
            (concrete: the result's dimension depends on it); at least one observed
            and one not.
        - `x`: shape `(D,)`; its entries where `mask` is set are the observation (the
            others are ignored).

        **Raises:** `ValueError` naming `mask` or `x`.
        """
        mask = check_mask(mask, (self.dim,), "mask")
        if mask.all() or not mask.any():
            raise ValueError(
                "`mask` must observe at least one coordinate and leave at least one "
                f"unobserved, got {int(mask.sum())} of {self.dim} observed."
            )
        x = jnp.asarray(x, dtype=self.means.dtype)
        if x.shape != (self.dim,):
            raise ValueError(f"`x` must have shape ({self.dim},), got {x.shape}.")
        obs, hid = np.flatnonzero(mask), np.flatnonzero(~mask)
        seen = GaussianMixture(self.means[:, obs], self.stds[:, obs], self.weights)
        log_w = seen.component_log_probs(x[obs])
        # A component far from the observation gets weight ~0; keep it > 0.
        weights = jnp.maximum(jax.nn.softmax(log_w), jnp.finfo(log_w.dtype).tiny)
        return GaussianMixture(self.means[:, hid], self.stds[:, hid], weights)


def _check_sde(owner: str, sde) -> None:
    if not isinstance(sde, AbstractSDE):
        raise TypeError(
            f"{owner}: `sde` must be an AbstractSDE (sd.VPSDE(), ...), got "
            f"{type(sde).__name__}."
        )


class MixtureScore(eqx.Module):
    """Exact score of the marginals of an [`AbstractMixture`][] under an SDE.

    Called as `score(t, x)` on one example `x` of shape `(D,)`. Build it with
    `mixture.score(sde)` (a [`GaussianMixture`][] or a [`FullCovarianceMixture`][]).
    """

    mixture: AbstractMixture
    sde: AbstractSDE

    def __check_init__(self):
        _check_sde("MixtureScore", self.sde)

    def __call__(self, t: ScalarLike, x: Float[ArrayLike, " D"]) -> Float[Array, " D"]:
        x = jnp.asarray(x)
        return self.mixture.marginal(self.sde, t).grad_log_prob(x).astype(x.dtype)


class MixtureClassifier(eqx.Module):
    r"""The exact noise-conditional classifier of a mixture's components:
    $(t, x) \mapsto \log p_t(k \mid x)$ for every component $k$, with $p_t$ the
    marginal of the mixture under the SDE. Guidance with it at scale 1,
    $\nabla_x \log p_t(x) + \nabla_x \log p_t(k \mid x) = \nabla_x \log p_t(x \mid k)$,
    is the exact score of component $k$'s marginal: the ground truth for
    [`ClassifierGuidance`][]. Build it with `mixture.classifier(sde)`.

    Called as `classifier(t, x)` on one example, it returns the log-probabilities,
    shape `(K,)`; `num_classes` is `K`.
    """

    mixture: AbstractMixture
    sde: AbstractSDE

    def __check_init__(self):
        _check_sde("MixtureClassifier", self.sde)

    @property
    def num_classes(self) -> int:
        return self.mixture.num_components

    def __call__(self, t: ScalarLike, x: Float[ArrayLike, " D"]) -> Float[Array, " K"]:
        x = jnp.asarray(x)
        logits = self.mixture.marginal(self.sde, t).component_log_probs(x)
        return jax.nn.log_softmax(logits).astype(x.dtype)


def _psd_sqrt(cov: Float[Array, "D D"]) -> Float[Array, "D D"]:
    """A square root `L` with `L L^T = cov` for a symmetric positive SEMI-definite
    `cov` (eigendecomposition; tiny negative eigenvalues from round-off are clipped)."""
    lam, vec = jnp.linalg.eigh(cov)
    return vec * jnp.sqrt(jnp.maximum(lam, 0.0))[None, :]


@jax.jit
def _full_noise(covs, k, z):
    roots = jax.vmap(_psd_sqrt)(covs)
    return jnp.einsum("nde,ne->nd", roots[k], z, precision=_EXACT)


class FullCovarianceMixture(AbstractMixture):
    r"""A mixture of Gaussians with full covariance matrices (an
    [`AbstractMixture`][]): $p(x) = \sum_k w_k\, \mathcal{N}(x;\ \mu_k,\ \Sigma_k)$.

    What an observation $y = A x + \sigma_y n$ of a mixture leaves when $A$ mixes
    coordinates ([`AbstractMixture.condition`][]). Like [`GaussianMixture`][] it is
    exact ground truth for every marginal under a linear SDE: component $k$ of $p_t$
    is $\mathcal{N}(a(t)\mu_k, a(t)^2\Sigma_k + s(t)^2 I)$.

    **Arguments:**

    - `means`: shape `(K, D)`.
    - `covs`: shape `(K, D, D)`, symmetric positive semi-definite. Singular
        covariances (a posterior given an exact linear observation) are allowed:
        then `sample`, `mean`, `covariance`, `marginal` and `score` (at `t > 0`)
        work, but `log_prob`, `responsibilities` and `classify` at `t = 0` do not
        (there is no density).
    - `weights`: shape `(K,)`, all > 0, normalised here. Default uniform.
    """

    means: Float[Array, "K D"]
    covs: Float[Array, "K D D"]
    weights: Float[Array, " K"]

    def __init__(
        self, means: ArrayLike, covs: ArrayLike, weights: ArrayLike | None = None
    ):
        means, weights = _means_and_weights("FullCovarianceMixture", means, weights)
        k, d = means.shape
        covs = jnp.asarray(covs, dtype=means.dtype)
        if covs.shape != (k, d, d):
            raise ValueError(
                f"FullCovarianceMixture: `covs` must have shape (K, D, D) = ({k}, {d}, "
                f"{d}) to match `means` {means.shape}, got {covs.shape}."
            )
        if is_concrete(means, covs, weights):
            _check_values("FullCovarianceMixture", weights, means=means, covs=covs)
            c = np.asarray(covs, np.float64)
            scale = float(np.max(np.abs(c))) + 1e-30
            if float(np.max(np.abs(c - np.swapaxes(c, 1, 2)))) > 1e-4 * scale:
                raise ValueError("FullCovarianceMixture: `covs` must be symmetric.")
            if float(np.min(np.linalg.eigvalsh(c))) < -1e-4 * scale:
                raise ValueError(
                    "FullCovarianceMixture: `covs` must be positive semi-definite."
                )
        self.means = means
        self.covs = 0.5 * (covs + jnp.swapaxes(covs, 1, 2))
        self.weights = weights / jnp.sum(weights)

    def component_covariances(self) -> Float[Array, "K D D"]:
        return self.covs

    def _noise(self, k, z):
        return _full_noise(self.covs, k, z)

    def _log_normal_terms(self, x):
        chol = jnp.linalg.cholesky(self.covs)

        def one(mu, L):
            z = jax.scipy.linalg.solve_triangular(L, x - mu, lower=True)
            logdet = 2 * jnp.sum(jnp.log(jnp.diag(L)))
            return 0.5 * jnp.sum(z**2), 0.5 * (
                logdet + self.dim * math.log(2 * math.pi)
            )

        return jax.vmap(one)(self.means, chol)

    def _component_scores(self, x):
        chol = jnp.linalg.cholesky(self.covs)
        return jax.vmap(lambda mu, L: jax.scipy.linalg.cho_solve((L, True), mu - x))(
            self.means, chol
        )

    def _pushed(self, a, s):
        eye = jnp.eye(self.dim, dtype=self.means.dtype)
        covs = a**2 * self.covs + s**2 * eye[None]
        return eqx.tree_at(lambda m: (m.means, m.covs), self, (a * self.means, covs))


def _condition(means, covs, weights, operator, y, sigma_y) -> FullCovarianceMixture:
    """Bayes' rule for each Gaussian component under `y = A x + sigma_y n`: evidence
    N(y; A mu, S), S = A Sigma A^T + sigma_y^2 I; gain G = Sigma A^T S^-1; posterior
    mean mu + G (y - A mu) and covariance Sigma - G A Sigma."""
    k, d = means.shape
    dtype = means.dtype
    A = jnp.asarray(operator)
    if not jnp.issubdtype(A.dtype, jnp.floating):
        A = A.astype(dtype)
    A = A.astype(dtype)
    if A.ndim != 2 or A.shape[1] != d:
        raise ValueError(
            f"`operator` must be a matrix of shape (M, D) with D = {d} (the mixture's "
            f"dimension), got shape {A.shape}."
        )
    m = A.shape[0]
    y = jnp.asarray(y, dtype=dtype)
    if y.shape != (m,):
        raise ValueError(
            f"`y` must have shape (M,) = ({m},) to match `operator` {A.shape}, got "
            f"{y.shape}."
        )
    check_nonnegative("sigma_y", sigma_y)
    log_w, post_means, post_covs = _bayes(means, covs, weights, A, y, sigma_y)
    if is_concrete(log_w, post_means, post_covs) and not (
        np.all(np.isfinite(np.asarray(log_w)))
        and np.all(np.isfinite(np.asarray(post_means)))
        and np.all(np.isfinite(np.asarray(post_covs)))
    ):
        raise ValueError(
            "`operator`: the posterior is not defined: with sigma_y = 0, A Sigma_k A^T "
            "must be invertible (A of full row rank), and `y` must be finite."
        )
    w = jnp.maximum(jax.nn.softmax(log_w), jnp.finfo(dtype).tiny)
    return FullCovarianceMixture(post_means, post_covs, w)


@jax.jit
def _bayes(means, covs, weights, A, y, sigma_y):
    """Per component: log weight x evidence, posterior mean and covariance."""
    m = A.shape[0]
    dtype = means.dtype
    noise = jnp.asarray(sigma_y, dtype) ** 2 * jnp.eye(m, dtype=dtype)

    def one(mu, cov):
        mm = lambda a, b: jnp.matmul(a, b, precision=_EXACT)  # noqa: E731
        S = mm(mm(A, cov), A.T) + noise
        L = jnp.linalg.cholesky(S)
        r = y - mm(A, mu)
        z = jax.scipy.linalg.solve_triangular(L, r, lower=True)
        log_ev = -0.5 * (
            jnp.sum(z**2)
            + 2 * jnp.sum(jnp.log(jnp.diag(L)))
            + m * math.log(2 * math.pi)
        )
        gain = jax.scipy.linalg.cho_solve((L, True), mm(A, cov)).T  # Sigma A^T S^-1
        post_mu = mu + mm(gain, r)
        post_cov = cov - mm(gain, mm(A, cov))
        return log_ev, post_mu, post_cov

    log_ev, post_means, post_covs = jax.vmap(one)(means, covs)
    return jnp.log(weights) + log_ev, post_means, post_covs
