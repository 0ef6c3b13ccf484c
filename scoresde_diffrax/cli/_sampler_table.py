"""The solver names of `--solver`: a table from each name to its
[`sd.bench.Sampler`][scoresde_diffrax.bench.Sampler], the one specification of a
sampler (solver object, reverse SDE or probability-flow ODE, grid, tolerances, and what
`scoresde solvers` prints about it) that `sd.bench` uses too. One scheme: diffrax's own
names where diffrax has the solver (`euler-maruyama`, `euler`, `heun`, `midpoint`,
`tsit5`, `dopri5`, `shark`, `sra1`), this package's samplers by their papers' names;
`--method sde|ode` only for a solver that serves both. `register_solver` adds more; the
names before this scheme (`DEPRECATED`) still work, with a note on stderr. Score
evaluations per step are counted from the solver (`Sampler.score_evals_per_step`), not
written here."""

import dataclasses
import sys
from collections.abc import Callable

import diffrax as dfx

from .. import (
    AncestralSampling,
    DDIM,
    DEIS,
    DPMSolverPP2M,
    DPMSolverPP3M,
    EDMHeun,
    Langevin,
    PredictorCorrector,
    restart_schedule,
    ReverseDiffusion,
    StochasticDPMSolverPP,
    StochasticEDMHeun,
    UniPC,
)
from ..bench import (
    DEFAULT_ATOL,
    DEFAULT_MAX_STEPS as DEFAULT_MAX_STEPS,
    DEFAULT_RTOL,
    Sampler,
)
from ._common import UserError


DEFAULT_STEPS = 1000


def SolverEntry(
    make: Callable,
    method: str,
    adaptive: bool = False,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    help: str = "",
    grid: str = "uniform",
    evals_per_step: int | None = None,
    order: str = "",
    reference: str = "",
    methods: tuple[str, ...] = (),
    plan: Callable | None = None,
    min_steps: int = 1,
) -> Sampler:
    """The older way to make a table entry (for `register_solver`): the same fields as
    [`sd.bench.Sampler`][scoresde_diffrax.bench.Sampler] with `make()` building the
    solver; returns that `Sampler` (named by `register_solver`)."""
    return Sampler(
        "",
        make(),
        method,
        grid,
        evals_per_step,
        adaptive,
        rtol,
        atol,
        plan=plan,
        help=help,
        order=order,
        reference=reference,
        methods=methods,
        min_steps=min_steps,
    )


def _paper_pc() -> PredictorCorrector:
    return PredictorCorrector(ReverseDiffusion(), Langevin(snr=0.16, batch_norm=True))


_SONG = "Song et al. 2021 (ICLR)"
_DPM = "Lu et al. 2022 (DPM-Solver++)"
_EDM = "Karras et al. 2022 (EDM)"
_SDE_TOL = "adaptive (default rtol=atol=1e-2)"
_ODE_TOL = f"adaptive (default rtol=atol={DEFAULT_RTOL:g})"


def _table(*samplers: Sampler) -> dict[str, Sampler]:
    return {s.name: s for s in samplers}


SOLVERS: dict[str, Sampler] = _table(
    # diffrax's solvers, on the reverse-time SDE
    Sampler(
        "euler-maruyama",
        dfx.Euler(),
        "sde",
        help="Euler-Maruyama on the reverse SDE, K steps (paper baseline)",
        order="0.5 strong, 1 weak",
        reference="Maruyama 1955; diffrax.Euler",
    ),
    Sampler(
        "euler-heun",
        dfx.EulerHeun(),
        "sde",
        help="Euler-Heun on the reverse SDE, K steps",
        order="0.5 strong",
        reference="diffrax.EulerHeun",
    ),
    Sampler(
        "shark",
        dfx.ShARK(),
        "sde",
        adaptive=True,
        rtol=1e-2,
        atol=1e-2,
        help=f"ShARK on the reverse SDE, {_SDE_TOL}",
        order="1.5 strong (additive noise)",
        reference="Foster, dos Reis, Strange 2023; diffrax.ShARK",
    ),
    Sampler(
        "sra1",
        dfx.SRA1(),
        "sde",
        adaptive=True,
        rtol=1e-2,
        atol=1e-2,
        help=f"SRA1 on the reverse SDE, {_SDE_TOL}",
        order="1.5 strong (additive noise)",
        reference="Rossler 2010; diffrax.SRA1",
    ),
    # diffrax's solvers, on the probability-flow ODE
    Sampler(
        "euler",
        dfx.Euler(),
        "ode",
        help="Euler on the probability-flow ODE, K steps",
        order="1",
        reference="diffrax.Euler",
    ),
    Sampler(
        "heun",
        dfx.Heun(),
        "ode",
        help="Heun, K steps: the probability-flow ODE (default) or --method sde",
        order="2 (ODE)",
        reference="diffrax.Heun",
        methods=("ode", "sde"),
    ),
    Sampler(
        "midpoint",
        dfx.Midpoint(),
        "ode",
        help="midpoint on the probability-flow ODE, K steps",
        order="2",
        reference="diffrax.Midpoint",
    ),
    Sampler(
        "tsit5",
        dfx.Tsit5(),
        "ode",
        adaptive=True,
        help=f"Tsit5 on the probability-flow ODE, {_ODE_TOL}",
        order="5",
        reference="Tsitouras 2011; diffrax.Tsit5",
    ),
    Sampler(
        "dopri5",
        dfx.Dopri5(),
        "ode",
        adaptive=True,
        help=f"Dopri5 (RK45) on the probability-flow ODE, {_ODE_TOL}",
        order="5",
        reference="Dormand, Prince 1980; diffrax.Dopri5",
    ),
    # this package's
    Sampler(
        "pc",
        _paper_pc(),
        "sde",
        help="the paper's predictor-corrector: reverse diffusion + Langevin "
        "(snr=0.16, batch-averaged norms as in the paper's code), K steps",
        order="0.5 strong",
        reference=_SONG,
    ),
    Sampler(
        "reverse-diffusion",
        ReverseDiffusion(),
        "sde",
        help="reverse-diffusion predictor, K steps",
        order="0.5 strong",
        reference=_SONG,
    ),
    Sampler(
        "ancestral",
        AncestralSampling(),
        "sde",
        help="ancestral sampling, K steps",
        order="0.5 strong",
        reference="Ho et al. 2020; " + _SONG,
    ),
    Sampler(
        "sde-dpm-solver++2m",
        StochasticDPMSolverPP(2),
        "sde",
        "logsnr",
        help="SDE-DPM-Solver++(2M), K steps uniform in log-SNR",
        order="1 strong",
        reference=_DPM,
    ),
    Sampler(
        "edm-heun-churn",
        StochasticEDMHeun(),
        "sde",
        "edm",
        help="Karras et al.'s stochastic Heun (churn 0.1), K steps on the EDM grid",
        order="-",
        reference=_EDM,
    ),
    Sampler(
        "ddim",
        DDIM(),
        "ode",
        help="DDIM (eta=0), K steps uniform in t",
        order="1",
        reference="Song, Meng, Ermon 2021 (DDIM)",
    ),
    Sampler(
        "dpm-solver++2m",
        DPMSolverPP2M(),
        "ode",
        "logsnr",
        help="DPM-Solver++(2M), K steps uniform in log-SNR (try K=25)",
        order="2",
        reference=_DPM,
    ),
    Sampler(
        "dpm-solver++3m",
        DPMSolverPP3M(),
        "ode",
        "logsnr",
        help="DPM-Solver++(3M), K steps uniform in log-SNR",
        order="3",
        reference=_DPM,
    ),
    Sampler(
        "unipc",
        UniPC(),
        "ode",
        "logsnr",
        help="UniPC-3 (bh2, with corrector), K steps uniform in log-SNR",
        order="3 (+1 corrector)",
        reference="Zhao et al. 2023 (UniPC)",
    ),
    Sampler(
        "deis",
        DEIS(),
        "ode",
        "logsnr",
        help="DEIS (order 3, in t), K steps uniform in log-SNR",
        order="3",
        reference="Zhang, Chen 2023 (DEIS)",
    ),
    Sampler(
        "restart",
        DPMSolverPP2M(),
        "sde",
        "logsnr",
        help="Restart (Xu et al. 2023) around DPM-Solver++(2M): K steps in all, a "
        "log-SNR grid plus K // 10 restarts (noise level 0.3 -> 1.5) of 3 steps each "
        "(K >= 5)",
        order="-",
        reference="Xu et al. 2023 (Restart)",
        plan=restart_schedule,
        min_steps=5,
    ),
    Sampler(
        "edm-heun",
        EDMHeun(),
        "ode",
        "edm",
        help="Karras et al.'s Heun, K steps on the EDM rho=7 grid",
        order="2",
        reference=_EDM,
    ),
)


# The names before the one scheme: old name -> (new name, --method or None).
DEPRECATED: dict[str, tuple[str, str | None]] = {
    "euler-heun-sde": ("euler-heun", None),
    "heun-sde": ("heun", "sde"),
    "shark-adaptive": ("shark", None),
    "sra1-adaptive": ("sra1", None),
    "ode-euler": ("euler", None),
    "heun-ode": ("heun", "ode"),
    "midpoint-ode": ("midpoint", None),
    "ode-tsit5": ("tsit5", None),
    "dopri5-ode": ("dopri5", None),
}


def register_solver(name: str, entry: Sampler) -> None:
    """Add (or replace) a solver name of `scoresde sample --solver` (and of
    `scoresde bench --solvers`): `entry` is an
    [`sd.bench.Sampler`][scoresde_diffrax.bench.Sampler] (its `name` becomes `name`)."""
    if not isinstance(entry, Sampler):
        raise TypeError(
            f"`entry` must be an sd.bench.Sampler, got {type(entry).__name__}."
        )
    SOLVERS[name] = dataclasses.replace(entry, name=name)


@dataclasses.dataclass(frozen=True)
class SolverChoice:
    """A `--solver` (with `--method`) resolved: the name in the one scheme, its
    sampler (with the chosen method and, once `check_step_flags` has run, the step
    flags), the method and `--steps` (None: the default)."""

    name: str
    sampler: Sampler
    method: str
    steps: int | None = None

    @property
    def entry(self) -> Sampler:
        """The table's sampler (the older name of `sampler`)."""
        return SOLVERS.get(self.name, self.sampler)

    @property
    def label(self) -> str:
        """The name, with `--method` where it is not the solver's default."""
        if self.method != SOLVERS[self.name].method:
            return f"{self.name} --method {self.method}"
        return self.name

    def sample_kwargs(self, sde, eps: float | None = None) -> dict:
        """The `solver`, `method` and step arguments of `sd.sample`: `--steps` fixed
        steps (default 1000) ending at `eps` (None: the SDE's default), or for an
        adaptive solver its PID controller and `--max-steps`."""
        steps = DEFAULT_STEPS if self.steps is None else self.steps
        return self.sampler.step_kwargs(sde, steps, eps=eps)


def choose_solver(
    name: str,
    method: str | None = None,
    *,
    prog: str = "scoresde",
    flag: str = "--solver",
    fixed_only: bool = False,
) -> SolverChoice:
    """Resolve `--solver name` and `--method`: a deprecated name maps to the new one
    with a one-line note on stderr (naming the command `prog`); an unknown name, a
    method the solver does not serve, or (`fixed_only`) an adaptive solver is a
    `UserError` naming `flag` and what is allowed."""
    if name in DEPRECATED:
        new, new_method = DEPRECATED[name]
        if method is not None and new_method is not None and method != new_method:
            raise UserError(
                f"--method {method} contradicts {flag} {name} (now {new} --method "
                f"{new_method})"
            )
        method = method or new_method
        said = new + (f" --method {new_method}" if new_method else "")
        note = f"{prog}: note: {flag} {name} is deprecated; use {flag} {said}"
        name = new
    else:
        note = None
    if name not in SOLVERS:
        allowed = [k for k, v in SOLVERS.items() if not (fixed_only and v.adaptive)]
        raise UserError(
            f"{flag}: unknown solver {name!r}; choose from {', '.join(allowed)} "
            "(`scoresde solvers` describes them)"
        )
    entry = SOLVERS[name]
    if fixed_only and entry.adaptive:
        fixed = [k for k, v in SOLVERS.items() if not v.adaptive]
        raise UserError(
            f"{flag} {name} is adaptive; this command needs a fixed-step solver: "
            f"{', '.join(fixed)}"
        )
    if method is None:
        method = entry.method
    if method not in entry.all_methods:
        what = "reverse-time SDE" if entry.method == "sde" else "probability-flow ODE"
        raise UserError(
            f"--method {method}: {flag} {name} solves the {what} only (--method "
            f"{entry.method}); --method is for solvers that serve both: "
            + ", ".join(k for k, v in SOLVERS.items() if len(v.all_methods) > 1)
        )
    if note is not None:  # once the name is known to be usable
        print(note, file=sys.stderr)
    return SolverChoice(name, dataclasses.replace(entry, method=method), method)


def check_step_flags(
    choice: SolverChoice, args, *, deprecated_steps: bool
) -> SolverChoice:
    """Check `--steps`, `--max-steps`, `--rtol`, `--atol` against the solver (fixed
    steps take `--steps`; adaptive ones the other three) and return the choice with
    them applied. `deprecated_steps`: an old adaptive name, whose `--steps` meant the
    maximum number of steps (taken as `--max-steps`)."""
    steps, max_steps = args.steps, args.max_steps
    sampler = choice.sampler
    if sampler.adaptive:
        if steps is not None:
            if not deprecated_steps or max_steps is not None:
                raise UserError(
                    f"--steps is for fixed-step solvers; --solver {choice.name} is "
                    "adaptive: set --max-steps (the most steps it may take) and "
                    "--rtol/--atol"
                )
            max_steps, steps = steps, None
        sampler = dataclasses.replace(
            sampler,
            rtol=sampler.rtol if args.rtol is None else args.rtol,
            atol=sampler.atol if args.atol is None else args.atol,
            max_steps=sampler.max_steps if max_steps is None else max_steps,
        )
        return dataclasses.replace(choice, sampler=sampler, steps=None)
    if steps is not None and steps < sampler.min_steps:
        raise UserError(
            f"--steps {steps} is below what --solver {choice.name} needs: at "
            f"least {sampler.min_steps}"
        )
    for flag, value in (
        ("--max-steps", max_steps),
        ("--rtol", args.rtol),
        ("--atol", args.atol),
    ):
        if value is not None:
            adaptive = [k for k, v in SOLVERS.items() if v.adaptive]
            raise UserError(
                f"{flag} is for adaptive solvers ({', '.join(adaptive)}); "
                f"--solver {choice.name} takes --steps fixed steps"
            )
    return dataclasses.replace(choice, steps=steps)


def solvers_table() -> str:
    """The table `scoresde solvers` prints: name, SDE/ODE, fixed/adaptive, score
    evaluations per step, order, reference."""
    head = ("name", "solves", "steps", "evals/step", "order", "reference")
    rows = []
    for name, e in SOLVERS.items():
        solves = "/".join(m.upper() for m in e.all_methods)
        if e.adaptive:
            steps = f"adaptive (rtol=atol={e.rtol:g})"
        else:
            steps = "fixed" + ("" if e.grid == "uniform" else f", {e.grid} grid")
        per_step = str(e.score_evals_per_step())
        rows.append((name, solves, steps, per_step, e.order, e.reference))
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]
    top = "  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()
    old = ", ".join(
        f"{k} -> {v[0]}" + (f" --method {v[1]}" if v[1] else "")
        for k, v in DEPRECATED.items()
    )
    return "\n".join(
        [top, "-" * len(top), *lines, "", f"Deprecated names (still accepted): {old}"]
    )
