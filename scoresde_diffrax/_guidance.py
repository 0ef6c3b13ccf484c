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
    ([`GaussianMixture.classifier`][]) it is exact. $\gamma > 1$ sharpens: the
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
