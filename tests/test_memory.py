"""Bounded memory: with only the final state saved, the memory of a compiled solve does
not grow with the number of steps.

XLA's buffer assignment (`memory_analysis()` of the compiled solve) is exact and known
before the solve runs, so the test compares it across step counts without running
anything. The control (saving every step) shows the measure sees growth when there is
some. benchmarks/bench_memory.py measures the processes' peak resident memory too.
"""

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import scoresde_diffrax as sd


SDE = sd.VPSDE()
MIX = sd.GaussianMixture(
    jnp.array([[-2.0, 0.0, 1.0, 0.5], [2.0, 1.0, -1.0, 0.0]]), jnp.array([0.5, 0.7])
)
SCORE = MIX.score(SDE)
SHAPE = (256, 4)  # 4 KiB of float32 state: a trajectory of 1000 steps would be 4 MiB
PID = dfx.PIDController(rtol=1e-5, atol=1e-5)
X = MIX.marginal(SDE, 1e-5).sample(jr.key(2), SHAPE[0])


def _memory(run) -> dict:
    m = jax.jit(run).lower(jr.key(0)).compile().memory_analysis()
    return {
        "temp": m.temp_size_in_bytes,
        "out": m.output_size_in_bytes,
        "arg": m.argument_size_in_bytes,
    }


def _sample_case(solver, steps_arg: str, field: str = "samples", **kw):
    """`(key, n) -> output` of a `sd.sample` call with `n` as `steps_arg`."""

    def run(k, n):
        r = sd.sample(k, SDE, SCORE, SHAPE, solver=solver, **{steps_arg: n}, **kw)
        return getattr(r, field)

    return run


PC = sd.PredictorCorrector(sd.ReverseDiffusion(), sd.Langevin(0.16, batch_norm=True))
CASES = {
    # "steps" is num_steps for fixed-step solves, max_steps for adaptive ones.
    "euler-maruyama": _sample_case(dfx.Euler(), "num_steps", method="sde"),
    "tsit5-adaptive": _sample_case(dfx.Tsit5(), "max_steps", stepsize_controller=PID),
    "shark-adaptive": _sample_case(dfx.ShARK(), "max_steps", stepsize_controller=PID),
    "pc-sampler": _sample_case(PC, "num_steps"),
    "likelihood": lambda k, n: (
        sd.log_likelihood(k, SDE, SCORE, X, max_steps=n).log_prob
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_solve_memory_does_not_grow_with_steps(case):
    run = CASES[case]
    small = _memory(lambda k: run(k, 100))
    large = _memory(lambda k: run(k, 1000))
    assert large["out"] == small["out"]
    # The working memory of the whole solve: identical buffers for 10x the steps (a
    # few hundred bytes of slack for XLA's alignment of different loop constants).
    assert abs(large["temp"] - small["temp"]) <= 512, (small, large)


def test_memory_measure_sees_a_growing_trajectory():
    """The control: saving every step costs steps x state, and the measure shows it."""

    run = _sample_case(
        dfx.Euler(),
        "num_steps",
        field="trajectory",
        method="sde",
        saveat=dfx.SaveAt(steps=True),
    )
    small = _memory(lambda k: run(k, 100))
    large = _memory(lambda k: run(k, 1000))
    state = SHAPE[0] * SHAPE[1] * 4
    grown = (large["temp"] + large["out"]) - (small["temp"] + small["out"])
    assert grown >= 900 * state, (small, large)
