"""A learned time grid on the shipped digits model (issue 21): DPM-Solver++(2M) at 10
score evaluations on its log-SNR grid and on a grid learned by `sd.learn_time_grid`
(64 training prior draws and 64 held-out ones, an adaptive Tsit5 teacher, at most 100
Adam steps; the U-Net makes every step costly on a CPU), scored by `sd.bench` (FD-digits
and sliced W2 to 180 test digits, standard errors) on prior draws never used in
learning. Also the held-out distance to the teacher before and after. Writes
benchmarks/results/learned_grid_digits.json.

    python benchmarks/bench_learned_grid_digits.py
"""

import json
import os
import sys
import time

import diffrax as dfx
import jax.random as jr


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import scoresde_diffrax as sd  # noqa: E402
from scoresde_diffrax.cli.bench import parse_problem  # noqa: E402


# Relative to the working directory (the repository root), as the records name it.
CKPT = os.path.relpath(
    os.path.join(os.path.dirname(__file__), "results", "digits_checkpoint")
)
NFE, N = 10, 180


def main():
    problem = parse_problem(f"checkpoint:{CKPT}", N)
    solver = sd.DPMSolverPP2M()
    t = time.perf_counter()
    grid = sd.learn_time_grid(
        jr.key(1000),  # the scored samples use bench.run's keys
        problem.sde,
        problem.score,
        (64, *problem.shape),
        solver=solver,
        num_evals=NFE,
        init="logsnr",
        num_iters=100,
        progress=True,
    )
    learn_wall = time.perf_counter() - t
    grid.save(os.path.join(os.path.dirname(__file__), "results", "digits_grid.json"))
    samplers = [
        sd.bench.Sampler("dpm-solver++2m, logsnr grid", solver, "ode", grid="logsnr"),
        sd.bench.Sampler(
            "dpm-solver++2m, learned grid",
            solver,
            "ode",
            plan=lambda sde, nfe: (solver, dfx.StepTo(grid.ts)),
        ),
    ]
    records = sd.bench.run(
        jr.key(0),
        [problem],
        samplers,
        [NFE],
        num_samples=N,
        metrics=["fd_digits", "sliced_w2"],
    )
    table = sd.bench.to_markdown(records)
    print(table)
    out = dict(
        command="python " + " ".join(sys.argv),
        learn=dict(
            seconds=grid.seconds,
            wall_s=learn_wall,
            teacher_seconds=grid.teacher_seconds,
            teacher_evals=grid.teacher_evals,
            optimiser_steps=grid.optimiser_steps,
            held_out_initial=grid.initial_held_out_loss,
            held_out_best=grid.best_held_out_loss,
            ts=[float(v) for v in grid.ts],
        ),
        records=[r.as_dict() for r in records],
        load_average=os.getloadavg(),
        table=table,
    )
    path = os.path.join(
        os.path.dirname(__file__), "results", "learned_grid_digits.json"
    )
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
