"""Score adapters for class-conditional sampling: classifier guidance."""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._checks import concrete_float, is_concrete
from ._conditioning import PerExample
from ._custom_types import ScalarLike


def _num_classes(classifier, num_classes) -> int | None:
    """`num_classes` if given, else the classifier's own count (a `num_classes`
    attribute, or the config of an `sd.nn` classifier), else None."""
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(
            num_classes, (int, np.integer)
        ):
            raise ValueError(f"`num_classes` must be an int >= 1, got {num_classes!r}.")
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be an int >= 1, got {num_classes}.")
        return int(num_classes)
    for owner in (classifier, getattr(classifier, "config", None)):
        n = getattr(owner, "num_classes", None)
        if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
            return int(n)
    return None


class ClassifierGuidance(eqx.Module):
    r"""Class-conditional score by classifier guidance (Song et al. 2021, sec. 5;
    Dhariwal & Nichol 2021):

    $$s(t, x \mid y) = s_\theta(t, x) + \gamma\, \nabla_x \log p_t(y \mid x),$$

    with $p_t(y \mid x)$ a noise-conditional classifier and $y$ the label of each
    example. At $\gamma = 1$ this is Bayes' rule, the score of
    $p_t(x \mid y)$; with the exact classifier of a mixture
    ([`AbstractMixture.classifier`][]) it is exact. $\gamma > 1$ sharpens: the
    samples concentrate where the classifier is confident in $y$ (roughly a sample of
    $p(x)\, p(y \mid x)^\gamma$): the mean probability of the label rises with
    $\gamma$, and far from other classes nothing changes. $\gamma = 0$ is the
    unconditional score.

    The labels are per example ([`PerExample`][]): example $i$ of the batch is
    guided towards `labels[i]`, so one batch can hold every class. It is a score like
    any other, so every sampler takes it (predictor-corrector, reverse-SDE solvers,
    the probability-flow ODE, DDIM, DPM-Solver, adaptive solvers); each score
    evaluation also costs one classifier gradient.

    **Arguments:**

    - `score`: the unconditional score `score(t, x)` on one example.
    - `classifier`: called as `classifier(t, x)` on one example, returning the
        logits or log-probabilities of the classes, shape `(num_classes,)`
        (normalised here with `log_softmax`): a trained
        `sd.nn.NoiseConditionalClassifier`, `mixture.classifier(sde)`, or any callable.
    - `labels`: integer labels, shape `(num_samples,)`, one per sample, each in
        `0..num_classes - 1`.
    - `scale`: the guidance scale $\gamma \ge 0$. Default 1.
    - `num_classes`: the number of classes; default: read from the classifier
        (`classifier.num_classes` or `classifier.config.num_classes`). With neither,
        labels are checked at run time.

    **Raises:** `ValueError` naming `labels` (not integers, not 1-D, out of range),
    `scale` (negative or not finite) or `num_classes`; `TypeError` naming `score` or
    `classifier` if not callable. [`sample`][] raises a `ValueError` naming `labels`
    if their number differs from the number of samples.

    **Example:**

    ```python
    sde = sd.VPSDE()
    guided = sd.ClassifierGuidance(mix.score(sde), mix.classifier(sde),
                                   labels=jnp.arange(1000) % mix.num_components)
    x = sd.sample(key, sde, guided, (1000, 2), solver=sd.PredictorCorrector(),
                  num_steps=500).samples          # sample i from component i % K
    ```

    **References:** Song et al., *Score-Based Generative Modeling through Stochastic
    Differential Equations*, ICLR 2021, sec. 5 and appendix I.1; Dhariwal & Nichol,
    *Diffusion Models Beat GANs on Image Synthesis*, NeurIPS 2021 (the scale).
    """

    score: Callable
    classifier: Callable
    labels: PerExample
    scale: Array
    num_classes: int | None = eqx.field(static=True)

    def __init__(
        self,
        score: Callable,
        classifier: Callable,
        labels: ArrayLike,
        scale: ScalarLike = 1.0,
        *,
        num_classes: int | None = None,
    ):
        if not callable(score):
            raise TypeError(
                f"`score` must be callable as score(t, x), got {type(score).__name__}."
            )
        if not callable(classifier):
            raise TypeError(
                "`classifier` must be callable as classifier(t, x) -> logits, got "
                f"{type(classifier).__name__}."
            )
        v = concrete_float(scale, "scale")
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise ValueError(
                f"`scale` (the guidance scale) must be a finite number >= 0, got "
                f"{scale!r}."
            )
        labels = jnp.asarray(labels)
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(
                f"`labels` must be integers (class indices), got dtype {labels.dtype}."
            )
        if labels.ndim != 1:
            raise ValueError(
                "`labels` must have shape (num_samples,), one label per sample, got "
                f"shape {labels.shape}."
            )
        k = _num_classes(classifier, num_classes)
        if k is not None and is_concrete(labels) and labels.size:
            lo, hi = int(jnp.min(labels)), int(jnp.max(labels))
            if lo < 0 or hi >= k:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"`labels` must be in 0..{k - 1} (the classifier has {k} "
                    f"classes), got {bad}."
                )
        self.score = score
        self.classifier = classifier
        self.labels = PerExample(labels, name="labels")
        # An array, so a new scale does not compile a new program.
        self.scale = jnp.asarray(scale, dtype=jnp.result_type(float))
        self.num_classes = k

    def log_prob(
        self, t: ScalarLike, x: Float[ArrayLike, "*shape"]
    ) -> Float[Array, ""]:
        """$\\log p_t(y \\mid x)$ of this example's label (one example)."""
        logits = jnp.asarray(self.classifier(t, x))
        if logits.ndim != 1 or (
            self.num_classes is not None and logits.shape[0] != self.num_classes
        ):
            raise ValueError(
                "`classifier` must return one logit per class, shape "
                f"({self.num_classes or 'num_classes'},), for one example; got "
                f"{logits.shape}."
            )
        label = self.labels.value
        if self.num_classes is None:
            label = eqx.error_if(
                label,
                (label < 0) | (label >= logits.shape[0]),
                f"`labels` must be in 0..{logits.shape[0] - 1} (the classifier's "
                "classes).",
            )
        return jax.nn.log_softmax(logits)[label]

    def __call__(
        self, t: ScalarLike, x: Float[ArrayLike, "*shape"]
    ) -> Float[Array, "*shape"]:
        x = jnp.asarray(x)
        grad = jax.grad(lambda u: self.log_prob(t, u))(x)
        out = jnp.asarray(self.score(t, x)) + self.scale * grad
        return out.astype(x.dtype)


# --------------------------------------------------------------------------- classifier-free


def _condition_spec(model) -> tuple[int, int] | None:
    """`(num_classes, context_dim)` of a conditional `sd.nn` network, bare or inside
    an `EpsScore`/`X0Score` (fields `model`); None if unknown (any other callable)."""
    for owner in (model, getattr(model, "model", None)):
        cfg = getattr(owner, "config", None)
        k, m = getattr(cfg, "num_classes", None), getattr(cfg, "context_dim", None)
        if isinstance(k, int) and isinstance(m, int):
            if not (k or m):
                raise ValueError(
                    "`model` is an unconditional network: build it with `num_classes` "
                    "or `context_dim` (e.g. sd.nn.MLPScore(..., num_classes=10)) and "
                    "train it with sd.ConditionalDSMLoss."
                )
            return k, m
    return None


def check_conditions(
    conditions: ArrayLike, model, num_classes: int | None, name: str = "conditions"
) -> tuple[Array, int | None]:
    """The per-example conditions as an array, checked against the model: integer
    labels `(n,)` in `0..K-1`, or context vectors `(n, context_dim)`; a `ValueError`
    naming `name` otherwise. Also returns the number of classes (None if not labels
    or unknown)."""
    c = jnp.asarray(conditions)
    spec = _condition_spec(model)
    k = None
    if num_classes is not None:
        k = _num_classes(None, num_classes)
    elif spec is not None and spec[0]:
        k = spec[0]
    labels = jnp.issubdtype(c.dtype, jnp.integer)
    if spec is not None and spec[1] and labels:
        raise ValueError(
            f"`{name}`: the model takes context vectors of size {spec[1]}, got integer "
            f"labels of shape {c.shape}."
        )
    if labels or (spec is not None and spec[0]):
        if not labels:
            raise ValueError(
                f"`{name}` must be integer class labels, got dtype {c.dtype}."
            )
        if c.ndim != 1:
            raise ValueError(
                f"`{name}` must have shape (num_samples,), one label per sample, got "
                f"shape {c.shape}."
            )
        if k is not None and is_concrete(c) and c.size:
            lo, hi = int(jnp.min(c)), int(jnp.max(c))
            if lo < 0 or hi >= k:
                raise ValueError(
                    f"`{name}` must be in 0..{k - 1} (the model has {k} classes), got "
                    f"{lo if lo < 0 else hi}."
                )
        return c, k
    if not jnp.issubdtype(c.dtype, jnp.floating):
        c = c.astype(jnp.result_type(float))
    m = spec[1] if spec is not None else None
    if c.ndim != 2 or (m is not None and c.shape[1] != m):
        raise ValueError(
            f"`{name}` must be context vectors of shape (num_samples, "
            f"{m or 'context_dim'}), one per sample, got shape {c.shape}."
        )
    if is_concrete(c) and not bool(jnp.all(jnp.isfinite(c))):
        raise ValueError(f"`{name}` must be finite (it has NaN or inf).")
    return c, None


def _check_model(model) -> None:
    if not callable(model):
        raise TypeError(
            "`model` must be callable as model(t, x, condition, drop=False), got "
            f"{type(model).__name__}."
        )


class ConditionalScore(eqx.Module):
    r"""The score of a conditional model at fixed per-example conditions,
    $s(t, x) = s_\theta(t, x, c_i)$ for example $i$: conditional sampling without
    guidance (one network call per score evaluation).

    **Arguments:**

    - `model`: a conditional score model, called as `model(t, x, condition)` on one
        example: a conditional `sd.nn` network (`num_classes` or `context_dim` > 0),
        bare or in `sd.EpsScore`/`sd.X0Score`, or any callable.
    - `conditions`: one condition per sample: integer labels `(num_samples,)` or
        context vectors `(num_samples, context_dim)` ([`PerExample`][]).
    - `num_classes`: the number of classes, to check labels against; default read
        from the network's config.

    **Raises:** `ValueError` naming `conditions` (wrong shape or dtype, a label
    outside the classes) or `model` (an unconditional network); [`sample`][] raises
    one naming `conditions` if their number differs from the number of samples.
    """

    model: Callable
    conditions: PerExample

    def __init__(
        self,
        model: Callable,
        conditions: ArrayLike,
        *,
        num_classes: int | None = None,
    ):
        _check_model(model)
        c, _ = check_conditions(conditions, model, num_classes)
        self.model = model
        self.conditions = PerExample(c, name="conditions")

    def __call__(
        self, t: ScalarLike, x: Float[ArrayLike, "*shape"]
    ) -> Float[Array, "*shape"]:
        x = jnp.asarray(x)
        return jnp.asarray(self.model(t, x, self.conditions.value)).astype(x.dtype)


class ClassifierFreeGuidance(eqx.Module):
    r"""Classifier-free guidance (Ho & Salimans 2021) as a score adapter:

    $$\tilde s(t, x \mid c) = (1 + w)\, s_\theta(t, x, c) - w\, s_\theta(t, x, \varnothing),$$

    with $s_\theta$ a conditional model trained with condition dropping
    ([`ConditionalDSMLoss`][]) and $\varnothing$ its learned "no condition" token.
    $w = 0$ is plain conditional sampling (bitwise the same as
    [`ConditionalScore`][]); $w > 0$ sharpens towards $p(x \mid c)\, p(c \mid x)^w$
    (approximately: the guided score is not the score of a diffused density).

    The conditions are per example ([`PerExample`][]): example $i$ of the batch is
    guided towards `conditions[i]`. It is a score like any other, so every sampler
    takes it.

    **Cost:** each evaluation of this score makes **two network calls**, the
    conditional one and the unconditional one (not one batched call: two separate
    calls keep the conditional output bitwise that of `ConditionalScore`). The
    `num_score_evals` that [`sample`][] reports counts evaluations of this adapter,
    so the network is called `2 * num_score_evals` times.

    **Arguments:**

    - `model`: a conditional score model, called as `model(t, x, condition)` and,
        for the unconditional score, `model(t, x, None)`: a conditional `sd.nn`
        network, bare or in `sd.EpsScore`/`sd.X0Score`, or any callable.
    - `conditions`: one condition per sample: integer labels `(num_samples,)` or
        context vectors `(num_samples, context_dim)`.
    - `scale`: the guidance scale $w \ge 0$. Default 1.
    - `num_classes`: the number of classes, to check labels against; default read
        from the network's config.

    **Raises:** `ValueError` naming `conditions` (wrong shape or dtype, a label
    outside the classes), `scale` (negative or not finite) or `model` (an
    unconditional network); `TypeError` naming `model` if it is not callable.

    **Example:**

    ```python
    net = sd.nn.MLPScore((2,), num_classes=8, key=jr.key(0))
    net = sd.train(key, sd.EpsScore(net, sde), sde, data,
                   loss=sd.ConditionalDSMLoss(cond_drop=0.1), num_steps=...).ema_model
    guided = sd.ClassifierFreeGuidance(net, jnp.arange(n) % 8, scale=2.0)
    x = sd.sample(key, sde, guided, (n, 2), solver=sd.PredictorCorrector(),
                  num_steps=500).samples
    ```

    **Reference:** Ho & Salimans, *Classifier-Free Diffusion Guidance*, NeurIPS 2021
    workshop (arXiv:2207.12598).
    """

    model: Callable
    conditions: PerExample
    scale: Array

    def __init__(
        self,
        model: Callable,
        conditions: ArrayLike,
        scale: ScalarLike = 1.0,
        *,
        num_classes: int | None = None,
    ):
        _check_model(model)
        v = concrete_float(scale, "scale")
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise ValueError(
                f"`scale` (the guidance scale w) must be a finite number >= 0, got "
                f"{scale!r}."
            )
        c, _ = check_conditions(conditions, model, num_classes)
        self.model = model
        self.conditions = PerExample(c, name="conditions")
        self.scale = jnp.asarray(scale, dtype=jnp.result_type(float))

    def __call__(
        self, t: ScalarLike, x: Float[ArrayLike, "*shape"]
    ) -> Float[Array, "*shape"]:
        x = jnp.asarray(x)
        cond = jnp.asarray(self.model(t, x, self.conditions.value))
        uncond = jnp.asarray(self.model(t, x, None))
        w = self.scale.astype(cond.dtype)
        return ((1 + w) * cond - w * uncond).astype(x.dtype)
