"""Conditional score networks, classifier-free guidance and the condition-dropping
loss: guidance at w = 0 is conditional sampling (bitwise); with the exact conditional
score of a mixture it samples each component; the loss matches its closed form at
the exact score of Gaussian data; a tiny conditional model trained through `sd.train`
samples its classes."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import check_reproduces, mixture_2d

import scoresde_diffrax as sd


class ExactConditional(eqx.Module):
    """The exact conditional score of a mixture: component `condition`'s marginal
    score; without a condition (None, or `drop`) the mixture's own score."""

    mix: sd.GaussianMixture
    sde: sd.AbstractSDE

    def __call__(self, t, x, condition=None, *, drop=False):
        uncond = self.mix.score(self.sde)(t, x)
        if condition is None:
            return uncond
        marg = self.mix.marginal(self.sde, t)
        comp = (marg.means[condition] - x) / marg.stds[condition] ** 2
        return jnp.where(drop, uncond, comp)


# --------------------------------------------------------------------------- networks


@eqx.filter_jit
def _outputs(net, t, x, conditions, drops):
    """`net(t, x, c, drop=d)` for every pair, one vmapped call; and `net(t, x)`."""
    vm = jax.vmap(lambda c, d: net(t, x, c, drop=d))(conditions, drops)
    return vm, net(t, x)


def test_conditional_networks():
    """Labels and context vectors change the output; None and drop=True (traced,
    under vmap) give the null token whatever the condition; unconditional networks
    keep their weights and refuse a condition; a condition of the wrong shape names
    `condition`."""
    x2, t = jnp.array([0.3, -0.2]), jnp.asarray(0.4)
    base = sd.nn.MLPScore((2,), key=jr.key(0))
    lab = sd.nn.MLPScore((2,), num_classes=3, key=jr.key(0))
    ctx = sd.nn.MLPScore((2,), context_dim=4, key=jr.key(0))
    # One level, no attention: the U-Net compiles in seconds, the wiring is the same.
    unet = sd.nn.UNet(
        (1, 4, 4),
        channels=8,
        channel_mult=(1,),
        attn_resolutions=(),
        num_classes=10,
        key=jr.key(1),
    )
    img = jr.normal(jr.key(2), (1, 4, 4))
    # The unconditional part of the weights is that of the unconditional network.
    np.testing.assert_array_equal(base.out.weight, lab.out.weight)
    drops = jnp.array([False, False, True, True])
    cases = [
        (lab, x2, jnp.array([0, 2, 0, 2])),
        (ctx, x2, jnp.stack([jnp.ones(4), -jnp.ones(4)] * 2)),
        (unet, img, jnp.array([3, 7, 3, 7])),
    ]
    for net, x, conds in cases:
        vm, none = _outputs(net, t, x, conds, drops)
        assert vm.shape == (4, *x.shape)
        assert float(jnp.abs(vm[0] - vm[1]).max()) > 1e-5  # the condition matters
        assert float(jnp.abs(vm[0] - vm[2]).max()) > 1e-5  # dropping it too
        np.testing.assert_array_equal(vm[2], vm[3])  # the null token
        np.testing.assert_allclose(vm[2], none, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="`condition`.*unconditional"):
        base(t, x2, jnp.asarray(0))
    with pytest.raises(ValueError, match="`condition`.*integer"):
        lab(t, x2, jnp.ones(2, int))
    with pytest.raises(ValueError, match="`condition`.*context vector"):
        ctx(t, x2, jnp.ones(3))
    with pytest.raises(ValueError, match="`num_classes`"):
        sd.nn.MLPScore((2,), num_classes=-1, key=jr.key(0))
    with pytest.raises(ValueError, match="not both"):
        sd.nn.MLPScore((2,), num_classes=2, context_dim=2, key=jr.key(0))


# --------------------------------------------------------------------------- guidance


def test_guidance_at_zero_is_conditional_sampling_bitwise():
    """ClassifierFreeGuidance(w=0) and ConditionalScore sample the same bits (a
    conditional network in EpsScore, per-example labels, a stochastic sampler); w = 2
    does not; each evaluation makes two network calls."""
    sde = sd.VPSDE()
    net = sd.EpsScore(sd.nn.MLPScore((2,), num_classes=3, key=jr.key(0)), sde)
    labels = jnp.arange(64) % 3
    run = lambda score: np.asarray(  # noqa: E731
        sd.sample(
            jr.key(1), sde, score, (64, 2), solver=sd.ReverseDiffusion(), num_steps=10
        ).samples
    )
    a = run(sd.ConditionalScore(net, labels))
    b = run(sd.ClassifierFreeGuidance(net, labels, scale=0.0))
    np.testing.assert_array_equal(a, b)
    c = run(sd.ClassifierFreeGuidance(net, labels, scale=2.0))
    assert np.abs(c - a).max() > 1e-4
    calls = []

    def counting(t, x, condition=None, *, drop=False):
        jax.debug.callback(lambda: calls.append(condition is None))
        return net(t, x, condition, drop=drop)

    guided = sd.ClassifierFreeGuidance(counting, labels[:4], scale=1.0, num_classes=3)
    jax.block_until_ready(sd._term.batched_score(guided, 0.5, jnp.zeros((4, 2))))
    # One conditional and one unconditional network call (each vmapped over the batch).
    assert sorted(calls) == [False, True]


def test_exact_guidance_at_zero_samples_each_component():
    """With the exact conditional score of a mixture (component score as the
    conditional, mixture score as the unconditional), guidance at w = 0 with labels
    cycling over the components samples each component exactly (the helpers' full
    mixture checks on the equally weighted mixture, and >= 99 % of each label's
    samples in its component); w = 2 concentrates each label's samples further into its
    component (higher mean responsibility)."""
    sde = sd.VPSDE()
    mix = mixture_2d()
    model = ExactConditional(mix, sde)
    n = 3000
    labels = jnp.arange(n) % mix.num_components
    grid = sd.time_grid(sde, 60, kind="logsnr")

    def run(w):
        guided = sd.ClassifierFreeGuidance(model, labels, scale=w, num_classes=3)
        return np.asarray(
            sd.sample(
                jr.key(0),
                sde,
                guided,
                (n, 2),
                solver=sd.DPMSolverPP2M(),
                stepsize_controller=dfx.StepTo(grid),
            ).samples
        )

    x0, x2 = run(0.0), run(2.0)
    resp = lambda x: np.asarray(jax.vmap(mix.responsibilities)(jnp.asarray(x)))  # noqa: E731
    lab = np.asarray(labels)
    # Labels cycling over the components: exact draws of the equally weighted mixture.
    k_all = mix.num_components
    equal = sd.GaussianMixture(mix.means, mix.stds, jnp.full((k_all,), 1.0 / k_all))
    check_reproduces(equal, x0, jr.key(10))
    for k in range(k_all):
        assert np.mean(np.argmax(resp(x0[lab == k]), 1) == k) >= 0.99
        r0, r2 = resp(x0[lab == k])[:, k], resp(x2[lab == k])[:, k]
        assert r2.mean() > r0.mean(), (k, r0.mean(), r2.mean())


# --------------------------------------------------------------------------- loss


MU = np.array([[1.5, 0.0], [-1.5, 0.5]])
S0, M_UNCOND, S_UNCOND = 0.5, np.array([0.0, 0.25]), 1.2


class GaussianConditional(eqx.Module):
    """Exact score of x0 | c ~ N(mu_c, S0^2 I) under the SDE; without a condition the
    exact score of N(M_UNCOND, S_UNCOND^2 I) (a Gaussian 'unconditional model')."""

    sde: sd.AbstractSDE

    def __call__(self, t, x, condition=None, *, drop=False):
        a, s = self.sde.mean_coeff(t), self.sde.std(t)
        mu = jnp.asarray(MU, x.dtype)[condition]
        cond = -(x - a * mu) / (a**2 * S0**2 + s**2)
        unc = -(x - a * jnp.asarray(M_UNCOND, x.dtype)) / (a**2 * S_UNCOND**2 + s**2)
        return jnp.where(drop, unc, cond)


def _closed_form(sde, p_drop, eps):
    """E[loss] in closed form (per dimension, sigma^2 weighting), by quadrature over t:
    given c, x_t ~ N(a mu_c, v I), v = a^2 S0^2 + s^2, and E[z | x_t, c] = -s s*_c, so
    E||s s_theta + z||^2 / D = s^2 E||s_theta - s*_c||^2 / D + 1 - s^2 / v; it is
    1 - s^2/v for the exact conditional score, and for the Gaussian 'unconditional'
    score (V = a^2 S^2 + s^2) s^2 [v (1/v - 1/V)^2 + a^2 |mu_c - m|^2 / (D V^2)] more."""
    t = np.linspace(eps, float(sde.T), 20001)
    a = np.asarray(jax.vmap(sde.mean_coeff)(jnp.asarray(t)), np.float64)
    s = np.asarray(jax.vmap(sde.std)(jnp.asarray(t)), np.float64)
    v, V = a**2 * S0**2 + s**2, a**2 * S_UNCOND**2 + s**2
    cond = 1 - s**2 / v
    d = MU.shape[1]
    far = np.mean(np.sum((MU - M_UNCOND) ** 2, 1))  # classes equally likely
    drop = cond + s**2 * (v * (1 / v - 1 / V) ** 2 + a**2 * far / (d * V**2))
    f = (1 - p_drop) * cond + p_drop * drop
    return float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(t)) / (t[-1] - t[0]))


def test_condition_dropping_loss_matches_closed_form():
    """Monte Carlo of ConditionalDSMLoss at the exact scores of Gaussian data, within
    4 standard errors of its closed form, for p_drop in {0, 0.3}; the two closed forms
    are far apart (a drop probability applied the wrong way round would fail)."""
    sde = sd.VPSDE()
    model = GaussianConditional(sde)
    n = 200_000
    kc, kx = jr.split(jr.key(0))
    labels = jr.bernoulli(kc, 0.5, (n,)).astype(jnp.int32)
    x0 = jnp.asarray(MU, jnp.float32)[labels] + S0 * jr.normal(kx, (n, 2))
    for p in (0.0, 0.3):
        loss = sd.ConditionalDSMLoss(cond_drop=p, eps=1e-3)
        keys = jr.split(jr.key(1), n)
        per = jax.jit(jax.vmap(loss.per_example, in_axes=(None, None, 0, 0, 0)))(
            model, sde, x0, labels, keys
        )
        per = np.asarray(per, np.float64)
        mc, se = per.mean(), per.std(ddof=1) / np.sqrt(n)
        exact = _closed_form(sde, p, 1e-3)
        other = _closed_form(sde, 1 - p, 1e-3)
        print(
            f"\np_drop {p}: Monte Carlo {mc:.5f} +- {se:.5f}, closed form {exact:.5f}"
        )
        assert abs(mc - exact) < 4 * se, (p, mc, exact, se)
        assert abs(other - exact) > 20 * se
        # The batched call is the mean of the per-example losses.
        batch = float(loss(model, sde, (x0[:1000], labels[:1000]), jr.key(2)))
        assert np.isfinite(batch)


# --------------------------------------------------------------------------- training


def test_train_conditional_toy_samples_its_classes():
    """A tiny conditional MLP trained through sd.train on labelled 2-D data (three
    separated Gaussians) samples each class at w = 0: the fraction of samples whose
    exact component is their label is above a loose bound for this short run
    (benchmark figure: README)."""
    mix = sd.GaussianMixture(
        jnp.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]]), jnp.array([0.4, 0.4, 0.4])
    )
    x, labels = mix.sample_with_labels(jr.key(0), 3000)
    data = sd.data.Dataset(x, labels.astype(jnp.int32), name="three-gaussians")
    sde = sd.VPSDE()
    net = sd.EpsScore(
        sd.nn.MLPScore((2,), width=64, depth=2, num_classes=3, key=jr.key(1)), sde
    )
    res = sd.train(
        jr.key(2),
        net,
        sde,
        data,
        loss=sd.ConditionalDSMLoss(cond_drop=0.2),
        num_steps=600,
        batch_size=256,
        learning_rate=3e-3,
        warmup_steps=50,
        ema_decay=0.99,
        steps_per_call=200,
        progress=False,
    )
    assert res.losses[-100:].mean() < res.losses[:100].mean()
    n = 600
    want = jnp.arange(n) % 3
    x = sd.sample(
        jr.key(3),
        sde,
        sd.ClassifierFreeGuidance(res.ema_model, want, scale=0.0),
        (n, 2),
        solver=sd.ReverseDiffusion(),
        num_steps=100,
    ).samples
    got = np.asarray(jax.vmap(mix.classify)(x))
    frac = float(np.mean(got == np.asarray(want)))
    print(f"\nconditional toy, 600 steps, w = 0: {frac:.3f} of samples in their class")
    assert frac > 0.9, frac  # measured 0.983


# --------------------------------------------------------------------------- bad input


def test_bad_conditional_input_names_the_argument():
    sde = sd.VPSDE()
    net = sd.nn.MLPScore((2,), num_classes=3, key=jr.key(0))
    ctx = sd.nn.MLPScore((2,), context_dim=4, key=jr.key(0))
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="`cond_drop`"):
            sd.ConditionalDSMLoss(cond_drop=p)
    with pytest.raises(ValueError, match="`conditions` must be in 0..2"):
        sd.ClassifierFreeGuidance(net, jnp.array([0, 3]))
    with pytest.raises(ValueError, match="`conditions` must be in 0..2"):
        sd.ConditionalScore(sd.EpsScore(net, sde), jnp.array([-1, 0]))
    with pytest.raises(ValueError, match="`conditions` must have shape"):
        sd.ClassifierFreeGuidance(net, jnp.zeros((2, 2), int))
    with pytest.raises(ValueError, match="`conditions` must be integer"):
        sd.ClassifierFreeGuidance(net, jnp.zeros(2))
    with pytest.raises(ValueError, match="`conditions` must be context vectors"):
        sd.ClassifierFreeGuidance(ctx, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="`conditions`.*context vectors of size 4"):
        sd.ClassifierFreeGuidance(ctx, jnp.array([0, 1]))
    with pytest.raises(ValueError, match="`scale`"):
        sd.ClassifierFreeGuidance(net, jnp.array([0, 1]), scale=-1.0)
    with pytest.raises(ValueError, match="`model` is an unconditional"):
        sd.ClassifierFreeGuidance(sd.nn.MLPScore((2,), key=jr.key(0)), jnp.array([0]))
    guided = sd.ClassifierFreeGuidance(net, jnp.array([0, 1, 2]))
    with pytest.raises(ValueError, match="`conditions`.*3 entries.*5 samples"):
        sd.sample(
            jr.key(0), sde, guided, (5, 2), solver=sd.ReverseDiffusion(), num_steps=2
        )
    data = sd.data.Dataset(jnp.zeros((8, 2)), jnp.arange(8) % 5)
    with pytest.raises(ValueError, match="`model` has num_classes=3"):
        sd.train(
            jr.key(0),
            net,
            sde,
            data,
            loss=sd.ConditionalDSMLoss(),
            num_steps=1,
            progress=False,
        )
    with pytest.raises(ValueError, match="`data`.*labels"):
        sd.train(
            jr.key(0),
            net,
            sde,
            jnp.zeros((8, 2)),
            loss=sd.ConditionalDSMLoss(),
            num_steps=1,
            progress=False,
        )


class _LabelWeightedDSM(sd.AbstractLabelledLoss):
    """A labelled loss of one's own: `DSMLoss` weighted by 1 + label."""

    def per_example(self, model, sde, x0, label, key):
        return (1.0 + label) * sd.DSMLoss().per_example(model, sde, x0, key)


def test_a_labelled_loss_of_ones_own_trains():
    """`sd.train` asks every loss the same things (its batch, its check, its value),
    so a labelled loss of one's own needs only `per_example`: each example gets its
    own label (all 0: the unlabelled loss on the same keys; all 1: twice it), it
    trains, and data without labels is refused naming `data`."""
    sde = sd.VPSDE()
    net = sd.nn.MLPScore((2,), key=jr.key(0))
    x = jr.normal(jr.key(1), (16, 2))
    loss, plain = _LabelWeightedDSM(), sd.DSMLoss()
    ref = plain(net, sde, x, jr.key(2))
    zeros, ones = jnp.zeros(16, jnp.int32), jnp.ones(16, jnp.int32)
    np.testing.assert_allclose(loss(net, sde, (x, zeros), jr.key(2)), ref, rtol=1e-6)
    np.testing.assert_allclose(loss(net, sde, (x, ones), jr.key(2)), 2 * ref, rtol=1e-6)
    data = sd.data.Dataset(x, jnp.arange(16) % 2)
    kw = dict(loss=loss, num_steps=2, batch_size=8, progress=False)
    res = sd.train(jr.key(0), net, sde, data, **kw)
    assert res.losses.shape == (2,) and np.all(np.isfinite(res.losses))
    with pytest.raises(ValueError, match="`data`: training with _LabelWeightedDSM"):
        sd.train(jr.key(0), net, sde, x, **kw)
