"""Class-conditional sampling by classifier guidance, against the exact class
posterior of a mixture (guidance at scale 1 = the chosen component's exact score)."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import mixture_2d

import scoresde_diffrax as sd


def _component(mix: sd.GaussianMixture, k: int) -> sd.GaussianMixture:
    return sd.GaussianMixture(mix.means[k : k + 1], mix.stds[k : k + 1])


@pytest.mark.parametrize(
    "sde_name, solver, kw",
    [
        ("vp", sd.ReverseDiffusion(), dict(num_steps=300)),
        ("ve", "dpm", None),
    ],
    ids=["vp-reverse-diffusion", "ve-dpm-solver++"],
)
def test_exact_guidance_samples_each_component(sde_name, solver, kw):
    """Labels cycle over the components in one batch; the samples of label k come
    from component k (>= 99 %) with its variance (ratio within 3 standard errors)."""
    # VE: sigma_max large enough that the prior's mismatch with p_T (a mean error of
    # |mu| sigma_0 / sigma_max through the deterministic flow) is below the noise.
    sde = sd.VPSDE() if sde_name == "vp" else sd.VESDE(sigma_min=0.01, sigma_max=100.0)
    if solver == "dpm":
        solver = sd.DPMSolverPP2M()
        kw = dict(stepsize_controller=dfx.StepTo(sd.time_grid(sde, 60, kind="logsnr")))
    mix = mixture_2d()
    n = 3000
    labels = jnp.arange(n) % mix.num_components
    guided = sd.ClassifierGuidance(mix.score(sde), mix.classifier(sde), labels)
    x = np.asarray(
        sd.sample(jr.key(0), sde, guided, (n, 2), solver=solver, **kw).samples
    )
    assigned = np.asarray(jax.vmap(mix.classify)(jnp.asarray(x)))
    for k in range(mix.num_components):
        xk = x[np.asarray(labels) == k]
        assert np.mean(assigned[np.asarray(labels) == k] == k) >= 0.99
        rep = sd.metrics.mixture_report(_component(mix, k), xk)
        assert abs(rep.variance_ratio - 1) < 3 * rep.variance_ratio_se, (k, rep)
        mean_se = np.asarray(mix.stds[k]) / np.sqrt(len(xk))
        assert np.all(np.abs(xk.mean(0) - np.asarray(mix.means[k])) < 4 * mean_se)


def test_guidance_scale_sharpens():
    """Two overlapping components: the mean exact p(k | x0) of the samples of label k
    rises with the scale; at scale 1 it is that of exact samples of component k."""
    sde = sd.VPSDE()
    mix = sd.GaussianMixture(
        jnp.array([[-1.0, 0.0], [1.0, 0.0]]), jnp.array([1.0, 1.0])
    )
    n = 1500
    exact = _component(mix, 0).sample(jr.key(1), n)
    confidence = lambda x: float(  # noqa: E731
        jnp.mean(jax.vmap(mix.responsibilities)(x)[:, 0])
    )
    floor = confidence(exact)
    conf = {}
    for scale in (0.0, 1.0, 3.0):
        guided = sd.ClassifierGuidance(
            mix.score(sde), mix.classifier(sde), jnp.zeros(n, int), scale
        )
        x = sd.sample(
            jr.key(2),
            sde,
            guided,
            (n, 2),
            solver=sd.ReverseDiffusion(),
            num_steps=100,
        ).samples
        conf[scale] = confidence(x)
    se = float(jnp.std(jax.vmap(mix.responsibilities)(exact)[:, 0])) / np.sqrt(n)
    assert abs(conf[1.0] - floor) < 4 * se, (conf, floor, se)
    assert conf[0.0] < conf[1.0] - 10 * se < conf[3.0] - 20 * se, conf


def test_bad_guidance_input_names_the_argument():
    sde = sd.VPSDE()
    mix = mixture_2d()
    score, clf = mix.score(sde), mix.classifier(sde)
    with pytest.raises(ValueError, match="`labels` must be in 0..2"):
        sd.ClassifierGuidance(score, clf, jnp.array([0, 3]))
    with pytest.raises(ValueError, match="`labels` must be in 0..2"):
        sd.ClassifierGuidance(score, clf, jnp.array([-1, 0]))
    with pytest.raises(ValueError, match="`labels` must be integers"):
        sd.ClassifierGuidance(score, clf, jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="`labels` must have shape"):
        sd.ClassifierGuidance(score, clf, jnp.zeros((2, 2), int))
    with pytest.raises(ValueError, match="`scale`"):
        sd.ClassifierGuidance(score, clf, jnp.array([0, 1]), scale=-1.0)
    with pytest.raises(ValueError, match="`scale`"):
        sd.ClassifierGuidance(score, clf, jnp.array([0, 1]), scale=float("nan"))
    with pytest.raises(TypeError, match="classifier"):
        sd.ClassifierGuidance(score, "not a classifier", jnp.array([0, 1]))
    guided = sd.ClassifierGuidance(score, clf, jnp.array([0, 1, 2]))
    with pytest.raises(ValueError, match="`labels`.*3 entries.*5 samples"):
        sd.sample(
            jr.key(0), sde, guided, (5, 2), solver=sd.ReverseDiffusion(), num_steps=2
        )
    # A score model where the classifier goes: its output is not one logit per class.
    wrong = sd.ClassifierGuidance(score, score, jnp.array([0, 1]), num_classes=3)
    with pytest.raises(
        ValueError, match="`classifier` must return one logit per class"
    ):
        sd.sample(
            jr.key(0), sde, wrong, (2, 2), solver=sd.ReverseDiffusion(), num_steps=2
        )
    # A classifier without a class count: labels are checked at run time.
    bare = lambda t, x: clf(t, x)  # noqa: E731
    guided = sd.ClassifierGuidance(score, bare, jnp.array([0, 7]))
    with pytest.raises(Exception, match="`labels` must be in 0..2"):
        sd.sample(
            jr.key(0), sde, guided, (2, 2), solver=sd.ReverseDiffusion(), num_steps=2
        )
