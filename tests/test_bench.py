"""The statistics of `sd.bench`: standard errors that include the sampling noise, a
floor from true samples of its own, and verdicts that hold their stated error rate.

Cheap by construction: an exact 2-D mixture, 128 samples, true samples posing as a
sampler (no solve), and the same shapes in every repetition (one compile)."""

import dataclasses

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import scoresde_diffrax as sd
from scoresde_diffrax.bench import _sw2_and_se, _Target, BenchRecord


N = 128
REPS = 100
MIX = sd.bench.mixture_preset(2, 2)
PROBLEM = sd.bench.MixtureProblem(MIX, sd.VPSDE(), "mixture 2-D")


def _record(name: str, figure: tuple, floor: tuple, budget=10) -> BenchRecord:
    return BenchRecord(
        problem=PROBLEM.label,
        sampler=name,
        nfe_budget=budget,
        nfe=budget or 50,
        steps=budget or 9,
        compile_s=0.0,
        run_s=0.0,
        metrics={"sliced_w2": figure},
        floor={"sliced_w2": floor},
    )


P, B = 64, 32  # projections and bootstrap resamples (the bench: 256 and 50)


@pytest.fixture(scope="module")
def repetitions():
    """Per repetition (vmapped: one compile): the figure and standard error of the
    floor (true samples of their own), of two exact samplers (true samples posing as
    samplers, drawn independently) and of the reference set itself, each against a
    fresh reference set."""

    def one(key):
        kr, kf, ka, kb, kp = jr.split(key, 5)
        ref = MIX.sample(kr, N)

        def fig(x):
            sw, proj, boot = _sw2_and_se(kp, x, ref, P, B)
            return jnp.stack([sw, jnp.hypot(proj, boot)])

        return jnp.stack([fig(MIX.sample(k, N)) for k in (kf, ka, kb)] + [fig(ref)])

    out = np.asarray(jax.jit(jax.vmap(one))(jr.split(jr.key(2024), REPS)), np.float64)
    return [tuple(tuple(f) for f in rep) for rep in out]


def test_standard_error_includes_the_sampling_noise(repetitions):
    """The reported standard error matches the spread of the figure over
    independent repetitions (the projections-only error is far below it)."""
    values = np.array([a[0] for _, a, _, _ in repetitions])
    ses = np.array([a[1] for _, a, _, _ in repetitions])
    ratio = np.median(ses) / values.std(ddof=1)
    assert 0.6 < ratio < 1.7, ratio
    x, y = MIX.sample(jr.key(0), N), MIX.sample(jr.key(1), N)
    _, proj_only = sd.bench.sliced_w2_with_se(jr.key(2), x, y)
    assert proj_only < 0.5 * values.std(ddof=1)


def test_exact_sampler_lands_at_the_floor(repetitions):
    """True samples posing as a sampler are `at the floor` in at least 95 of 100
    repetitions; with a floor taken from the reference samples themselves they are
    not (that floor fails this test)."""
    at_floor = at_bad_floor = 0
    for floor, a, _, bad_floor in repetitions:
        (r,) = sd.bench.verdicts([_record("exact", a, floor)])
        at_floor += r.verdict == "best, at the floor"
        (r,) = sd.bench.verdicts([_record("exact", a, bad_floor)])
        at_bad_floor += r.verdict == "best, at the floor"
    assert at_floor >= 95, at_floor
    assert at_bad_floor < 95, at_bad_floor


def _rows(x) -> set:
    return {tuple(r) for r in np.asarray(x, np.float64)}


def test_bench_floor_is_not_the_reference_set(monkeypatch):
    """`run`'s floor: true samples of their own against the reference set, none of
    them among the reference samples (every set the metrics see is recorded)."""
    seen = []
    metrics = sd.bench._mixture_metrics

    def spy(mix, x, *args):
        seen.append(np.asarray(x))
        return metrics(mix, x, *args)

    monkeypatch.setattr(sd.bench, "_mixture_metrics", spy)
    target = _Target(jr.key(5), PROBLEM, N, ["sliced_w2"])
    (floor_set,) = seen
    assert floor_set.shape == target.ref.shape
    assert not _rows(floor_set) & _rows(target.ref)
    x = np.asarray(MIX.sample(jr.key(6), N))
    assert target.floor["sliced_w2"][0] > 0
    assert not np.any(np.all(np.isin(target.ref, x), axis=1))
    (r,) = sd.bench.verdicts(
        [_record("exact", target.of(x)["sliced_w2"], target.floor["sliced_w2"])]
    )
    assert r.verdict == "best, at the floor"


def test_data_floor_is_the_held_data_beside_the_reference():
    """A data problem's floor: the next `num_samples` held examples against the
    reference (the first `num_samples`), never the reference itself."""
    data = np.asarray(MIX.sample(jr.key(8), 2 * N))
    problem = sd.bench.DataProblem(PROBLEM.sde, PROBLEM.score(), data, name="held")
    target = _Target(jr.key(5), problem, N, ["sliced_w2"])
    np.testing.assert_array_equal(target.ref, data[:N])
    floor = target.floor["sliced_w2"]
    assert floor[0] > 0 and floor == target.of(data[N:])["sliced_w2"]
    (r,) = sd.bench.verdicts([_record("held", floor, floor)])
    assert r.verdict == "best, at the floor"


def test_identical_samplers_rarely_called_different(repetitions):
    """Two identical samplers (independent draws) are called different at most at
    the stated 5% rate (at most 10 of 100, the binomial slack at 5%)."""
    different = 0
    for floor, a, b, _ in repetitions:
        rs = sd.bench.verdicts([_record("a", a, floor), _record("b", b, floor)])
        verdicts = sorted(r.verdict.split(",")[0] for r in rs)
        assert verdicts[0] == "best"
        different += verdicts[1] == "worse than best"
    assert different <= 10, different


def test_verdicts_rank_and_never_beat_the_floor():
    floor = (0.30, 0.02)
    rs = sd.bench.verdicts(
        [
            _record("good", (0.25, 0.02), floor),  # below the floor: noise
            _record("close", (0.28, 0.02), floor),
            _record("bad", (0.60, 0.02), floor),
            _record("adaptive", (0.9, 0.02), floor, budget=None),
        ]
    )
    assert [r.verdict for r in rs] == [
        "best, at the floor",
        "tied with best, at the floor",
        "worse than best",
        "best",  # the adaptive samplers form their own group
    ]


def test_run_draws_independently_per_sampler_and_gives_verdicts(tmp_path):
    """The same sampler twice gets independent draws (different figures) and a
    verdict naming its test in the JSON records."""
    em = sd.bench.Sampler("em", dfx.Euler(), "sde")
    records = sd.bench.run(
        jr.key(0),
        [PROBLEM],
        [em, dataclasses.replace(em, name="em2")],
        [4],
        num_samples=N,
    )
    a, b = (r.metrics["sliced_w2"] for r in records)
    assert a[0] != b[0]
    assert {r.verdict.split(",")[0] for r in records} <= {
        "best",
        "tied with best",
        "worse than best",
    }
    line = sd.bench.to_json_lines(records).splitlines()[0]
    assert sd.bench.VERDICT_TEST in line
    table = sd.bench.to_markdown(records)
    assert "| verdict |" in table and sd.bench.VERDICT_TEST in table


@pytest.mark.parametrize(
    "sampler",
    [
        sd.bench.Sampler("em", dfx.Euler(), "sde"),
        sd.bench.Sampler("dpm2m", sd.DPMSolverPP2M(), "ode", grid="logsnr"),
    ],
    ids=lambda s: s.name,
)
def test_budgets_share_one_program_with_the_same_samples(sampler):
    """`run` pads a sampler's grids to its largest budget: every budget's arguments
    have one structure and shape (one compiled program), and the padded solve takes
    exactly the budget's steps, bitwise equal to the unpadded one."""
    sde, shape = PROBLEM.sde, (16, 2)
    score = PROBLEM.score()
    kwargs = [sampler.sample_kwargs(sde, b, pad_to=6) for b in (3, 6)]
    structures = [
        jax.tree_util.tree_structure(k["stepsize_controller"]) for k in kwargs
    ]
    assert structures[0] == structures[1]
    assert [k["stepsize_controller"].ts.shape for k in kwargs] == [(7,), (7,)]
    plain = sd.sample(jr.key(3), sde, score, shape, **sampler.sample_kwargs(sde, 3))
    padded = sd.sample(jr.key(3), sde, score, shape, **kwargs[0])
    assert int(padded.stats["num_steps"]) == 3
    assert int(padded.stats["num_score_evals"]) == 3
    np.testing.assert_array_equal(padded.samples, plain.samples)
    with pytest.raises(ValueError, match="pad_to"):
        sampler.sample_kwargs(sde, 6, pad_to=5)
