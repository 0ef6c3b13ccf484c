"""The solver names of `--solver`: each maps to the solver object, the terms (reverse
SDE or probability-flow ODE), the steps of an `sd.sample` call, and what
`scoresde solvers` prints about it. One scheme: diffrax's own names where diffrax has
the solver (`euler-maruyama`, `euler`, `heun`, `midpoint`, `tsit5`, `dopri5`,
`shark`, `sra1`), this package's samplers by their papers' names; `--method sde|ode`
only for a solver that serves both. `register_solver` adds more; the names before
this scheme (`DEPRECATED`) still work, with a note on stderr."""

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
    time_grid,
    UniPC,
)
from ._common import UserError


DEFAULT_STEPS = 1000
DEFAULT_MAX_STEPS = 4096


@dataclasses.dataclass(frozen=True)
class SolverEntry:
    """How a solver name of the CLI maps to `sd.sample` arguments.

    - `make`: builds the diffrax (or scoresde_diffrax) solver object.
    - `method`: `"sde"` (reverse-time SDE) or `"ode"` (probability-flow ODE): the
        default; `methods` lists all it serves (default: `method` only).
    - `adaptive`: PID step-size control with `rtol`/`atol` (defaults here; `--rtol`,
        `--atol`) and at most `--max-steps` steps; else `--steps` fixed steps.
    - `help`: one line for `--help`.
    - `grid`: for fixed steps, the `sd.time_grid` kind (`"uniform"`, `"logsnr"`,
        `"edm"`) of the `--steps` steps.
    - `evals_per_step`: score evaluations per step; `order`: its order (text);
        `reference`: where it comes from (for `scoresde solvers`).
    - `plan`: for a sampler whose `--steps` are not one grid of equal cost (restart):
        `plan(sde, num_evals, eps=eps)` returns its `(solver, stepsize_controller)`
        spending exactly `num_evals = evals_per_step * steps` score evaluations (the
        solver then comes from `plan`, `make` gives its inner solver).
    - `min_steps`: the fewest `--steps` it takes.
    """

    make: Callable
    method: str
    adaptive: bool = False
    rtol: float = 1e-5
    atol: float = 1e-5
    help: str = ""
    grid: str = "uniform"
    evals_per_step: int = 1
    order: str = ""
    reference: str = ""
    methods: tuple[str, ...] = ()
    plan: Callable | None = None
    min_steps: int = 1

    @property
    def all_methods(self) -> tuple[str, ...]:
        return self.methods or (self.method,)

    def sample_kwargs(
        self,
        sde,
        steps: int | None,
        eps: float | None,
        *,
        method: str | None = None,
        max_steps: int | None = None,
        rtol: float | None = None,
        atol: float | None = None,
    ) -> dict:
        """The `solver`, `method` and step arguments of `sd.sample`: `steps` fixed
        steps (`--steps`, default 1000) ending at `eps` (None: the SDE's default), or
        for an adaptive solver a PID controller with `rtol`/`atol` (default the
        entry's) and `max_steps` (`--max-steps`, default 4096)."""
        kwargs: dict = dict(solver=self.make(), method=method or self.method)
        if self.adaptive:
            controller = dfx.PIDController(
                rtol=self.rtol if rtol is None else rtol,
                atol=self.atol if atol is None else atol,
            )
            return kwargs | dict(
                stepsize_controller=controller,
                max_steps=DEFAULT_MAX_STEPS if max_steps is None else max_steps,
            )
        steps = DEFAULT_STEPS if steps is None else steps
        if self.plan is not None:
            solver, controller = self.plan(sde, self.evals_per_step * steps, eps=eps)
            return kwargs | dict(solver=solver, stepsize_controller=controller)
        if self.grid == "uniform":
            return kwargs | dict(num_steps=steps)
        ts = time_grid(sde, steps, kind=self.grid, eps=eps)
        return kwargs | dict(stepsize_controller=dfx.StepTo(ts))


def _paper_pc() -> PredictorCorrector:
    return PredictorCorrector(ReverseDiffusion(), Langevin(snr=0.16, batch_norm=True))


_SONG = "Song et al. 2021 (ICLR)"
_ODE_2 = "2"

SOLVERS: dict[str, SolverEntry] = {
    # diffrax's solvers, on the reverse-time SDE
    "euler-maruyama": SolverEntry(
        dfx.Euler,
        "sde",
        help="Euler-Maruyama on the reverse SDE, K steps (paper baseline)",
        order="0.5 strong, 1 weak",
        reference="Maruyama 1955; diffrax.Euler",
    ),
    "euler-heun": SolverEntry(
        dfx.EulerHeun,
        "sde",
        help="Euler-Heun on the reverse SDE, K steps",
        order="0.5 strong",
        reference="diffrax.EulerHeun",
    ),
    "shark": SolverEntry(
        dfx.ShARK,
        "sde",
        True,
        1e-2,
        1e-2,
        "ShARK on the reverse SDE, adaptive (default rtol=atol=1e-2)",
        evals_per_step=2,
        order="1.5 strong (additive noise)",
        reference="Foster, dos Reis, Strange 2023; diffrax.ShARK",
    ),
    "sra1": SolverEntry(
        dfx.SRA1,
        "sde",
        True,
        1e-2,
        1e-2,
        "SRA1 on the reverse SDE, adaptive (default rtol=atol=1e-2)",
        evals_per_step=2,
        order="1.5 strong (additive noise)",
        reference="Rossler 2010; diffrax.SRA1",
    ),
    # diffrax's solvers, on the probability-flow ODE
    "euler": SolverEntry(
        dfx.Euler,
        "ode",
        help="Euler on the probability-flow ODE, K steps",
        order="1",
        reference="diffrax.Euler",
    ),
    "heun": SolverEntry(
        dfx.Heun,
        "ode",
        help="Heun, K steps: the probability-flow ODE (default) or --method sde",
        evals_per_step=2,
        order="2 (ODE)",
        reference="diffrax.Heun",
        methods=("ode", "sde"),
    ),
    "midpoint": SolverEntry(
        dfx.Midpoint,
        "ode",
        help="midpoint on the probability-flow ODE, K steps",
        evals_per_step=2,
        order=_ODE_2,
        reference="diffrax.Midpoint",
    ),
    "tsit5": SolverEntry(
        dfx.Tsit5,
        "ode",
        True,
        help="Tsit5 on the probability-flow ODE, adaptive (default rtol=atol=1e-5)",
        evals_per_step=6,
        order="5",
        reference="Tsitouras 2011; diffrax.Tsit5",
    ),
    "dopri5": SolverEntry(
        dfx.Dopri5,
        "ode",
        True,
        help="Dopri5 (RK45) on the probability-flow ODE, adaptive "
        "(default rtol=atol=1e-5)",
        evals_per_step=6,
        order="5",
        reference="Dormand, Prince 1980; diffrax.Dopri5",
    ),
    # this package's
    "pc": SolverEntry(
        _paper_pc,
        "sde",
        help="the paper's predictor-corrector: reverse diffusion + Langevin "
        "(snr=0.16, batch-averaged norms as in the paper's code), K steps",
        evals_per_step=2,
        order="0.5 strong",
        reference=_SONG,
    ),
    "reverse-diffusion": SolverEntry(
        ReverseDiffusion,
        "sde",
        help="reverse-diffusion predictor, K steps",
        order="0.5 strong",
        reference=_SONG,
    ),
    "ancestral": SolverEntry(
        AncestralSampling,
        "sde",
        help="ancestral sampling, K steps",
        order="0.5 strong",
        reference="Ho et al. 2020; " + _SONG,
    ),
    "sde-dpm-solver++2m": SolverEntry(
        lambda: StochasticDPMSolverPP(2),
        "sde",
        help="SDE-DPM-Solver++(2M), K steps uniform in log-SNR",
        grid="logsnr",
        order="1 strong",
        reference="Lu et al. 2022 (DPM-Solver++)",
    ),
    "edm-heun-churn": SolverEntry(
        StochasticEDMHeun,
        "sde",
        help="Karras et al.'s stochastic Heun (churn 0.1), K steps on the EDM grid",
        grid="edm",
        evals_per_step=2,
        order="-",
        reference="Karras et al. 2022 (EDM)",
    ),
    "ddim": SolverEntry(
        DDIM,
        "ode",
        help="DDIM (eta=0), K steps uniform in t",
        order="1",
        reference="Song, Meng, Ermon 2021 (DDIM)",
    ),
    "dpm-solver++2m": SolverEntry(
        DPMSolverPP2M,
        "ode",
        help="DPM-Solver++(2M), K steps uniform in log-SNR (try K=25)",
        grid="logsnr",
        order="2",
        reference="Lu et al. 2022 (DPM-Solver++)",
    ),
    "dpm-solver++3m": SolverEntry(
        DPMSolverPP3M,
        "ode",
        help="DPM-Solver++(3M), K steps uniform in log-SNR",
        grid="logsnr",
        order="3",
        reference="Lu et al. 2022 (DPM-Solver++)",
    ),
    "unipc": SolverEntry(
        UniPC,
        "ode",
        help="UniPC-3 (bh2, with corrector), K steps uniform in log-SNR",
        grid="logsnr",
        order="3 (+1 corrector)",
        reference="Zhao et al. 2023 (UniPC)",
    ),
    "deis": SolverEntry(
        DEIS,
        "ode",
        help="DEIS (order 3, in t), K steps uniform in log-SNR",
        grid="logsnr",
        order="3",
        reference="Zhang, Chen 2023 (DEIS)",
    ),
    "restart": SolverEntry(
        DPMSolverPP2M,
        "sde",
        help="Restart (Xu et al. 2023) around DPM-Solver++(2M): K steps in all, a "
        "log-SNR grid plus K // 10 restarts (noise level 0.3 -> 1.5) of 3 steps each "
        "(K >= 5)",
        grid="logsnr",
        order="-",
        reference="Xu et al. 2023 (Restart)",
        plan=restart_schedule,
        min_steps=5,
    ),
    "edm-heun": SolverEntry(
        EDMHeun,
        "ode",
        help="Karras et al.'s Heun, K steps on the EDM rho=7 grid",
        grid="edm",
        evals_per_step=2,
        order="2",
        reference="Karras et al. 2022 (EDM)",
    ),
}


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


def register_solver(name: str, entry: SolverEntry) -> None:
    """Add (or replace) a solver name of `scoresde sample --solver`."""
    SOLVERS[name] = entry


@dataclasses.dataclass(frozen=True)
class SolverChoice:
    """A `--solver` (with `--method`) resolved: the name in the one scheme, its entry
    and the method."""

    name: str
    entry: SolverEntry
    method: str

    @property
    def label(self) -> str:
        """The name, with `--method` where it is not the solver's default."""
        if self.method != self.entry.method:
            return f"{self.name} --method {self.method}"
        return self.name


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
    return SolverChoice(name, entry, method)


def check_step_flags(choice: SolverChoice, args, *, deprecated_steps: bool) -> dict:
    """Check `--steps`, `--max-steps`, `--rtol`, `--atol` against the solver (fixed
    steps take `--steps`; adaptive ones the other three) and return the keywords of
    `SolverEntry.sample_kwargs`. `deprecated_steps`: an old adaptive name, whose
    `--steps` meant the maximum number of steps (taken as `--max-steps`)."""
    steps, max_steps = args.steps, args.max_steps
    if choice.entry.adaptive:
        if steps is not None:
            if not deprecated_steps or max_steps is not None:
                raise UserError(
                    f"--steps is for fixed-step solvers; --solver {choice.name} is "
                    "adaptive: set --max-steps (the most steps it may take) and "
                    "--rtol/--atol"
                )
            max_steps, steps = steps, None
    else:
        if steps is not None and steps < choice.entry.min_steps:
            raise UserError(
                f"--steps {steps} is below what --solver {choice.name} needs: at "
                f"least {choice.entry.min_steps}"
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
    return dict(
        steps=steps,
        method=choice.method,
        max_steps=max_steps,
        rtol=args.rtol,
        atol=args.atol,
    )


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
        rows.append((name, solves, steps, str(e.evals_per_step), e.order, e.reference))
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
