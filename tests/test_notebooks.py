"""Execute every notebook's code cells, in order, in a fresh namespace; then check what
each computed (kept in its namespace, or printed) against the exact truth it shows."""

import contextlib
import io
import json
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np
import pytest
from helpers import check_reproduces

import scoresde_diffrax as sd


matplotlib.use("Agg")
NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def _execute(path: pathlib.Path) -> tuple[dict, str]:
    """The namespace after running every code cell, and everything they printed."""
    cells = json.loads(path.read_text())["cells"]
    namespace: dict = {"__name__": "__main__"}
    printed = io.StringIO()
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            with contextlib.redirect_stdout(printed):
                exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)
    return namespace, printed.getvalue()


def _mean_log_prob_z(mix: sd.GaussianMixture, x, key) -> float:
    """Mean exact log-density of `x` against as many true samples, in standard errors."""
    lp = np.asarray(jax.vmap(mix.log_prob)(x), np.float64)
    lp_true = np.asarray(
        jax.vmap(mix.log_prob)(mix.sample(key, x.shape[0])), np.float64
    )
    se = math.hypot(lp.std(ddof=1), lp_true.std(ddof=1)) / math.sqrt(len(lp))
    return float((lp.mean() - lp_true.mean()) / se)


def _printed(pattern: str, printed: str) -> list[tuple[str, ...]]:
    rows = re.findall(pattern, printed, flags=re.MULTILINE)
    assert rows, f"no printed line matches {pattern!r} in:\n{printed}"
    return rows


def _check_quickstart(ns: dict, printed: str) -> None:
    mix, sde = ns["mix"], ns["sde"]
    # Each of the three samplers reproduces the mixture (NUM_SAMPLES of them).
    assert len(ns["results"]) == 3
    for name, x in ns["results"].items():
        assert x.shape == (ns["NUM_SAMPLES"], 2), name
        check_reproduces(mix, x, jr.key(11))
    # The trajectory: at every saved time the states are distributed as p_t.
    traj = ns["out"]
    np.testing.assert_allclose(traj.ts, ns["ts"], rtol=1e-6)
    for i, (t, x) in enumerate(zip(traj.ts, traj.trajectory, strict=True)):
        z = _mean_log_prob_z(mix.marginal(sde, t), x, jr.key(20 + i))
        assert abs(z) < 4, (float(t), z)
    check_reproduces(mix.marginal(sde, traj.ts[-1]), traj.trajectory[-1], jr.key(12))
    # Several devices: the same samples as one device.
    np.testing.assert_array_equal(ns["x_sharded"], ns["x_one"])
    assert "same samples as one device: True" in printed


def _check_samplers_and_likelihoods(ns: dict, printed: str) -> None:
    true, n = ns["true"], ns["NUM_SAMPLES"]
    rows = _printed(
        r"^(.+?)\s+NFE=\s*(\d+) mean log p0=(\S+) var ratio=(\S+)$", printed
    )
    assert len(rows) == len(ns["runs"]), rows
    per_step = {"PC": 2, "DPM": 1, "EDM": 2, "DDIM": 1}  # score evaluations
    se = math.sqrt(2) * true.mean_log_prob_se  # of a difference of two means
    for name, nfe, lp, vr in rows:
        kind = re.match(r"[A-Z]+", name).group()
        steps = int(re.search(r"(\d+) steps", name).group(1))
        assert int(nfe) == steps * per_step[kind], (name, nfe)
        gap, ratio = float(lp) - true.mean_log_prob, float(vr)
        if kind == "PC":  # 200 steps: within the noise of NUM_SAMPLES true samples
            # (the variance ratio pools n * 2 squared deviations: SE sqrt(1 / n)).
            assert abs(gap) < 4 * se and abs(ratio - 1) < 4 / math.sqrt(n), name
        else:  # 10-20 steps: visibly off (a few tenths of a nat), never far off
            assert abs(gap) < 0.6 and 0.8 < ratio < 1.5, (name, gap, ratio)
    # Likelihoods: the exact trace is exact to the solver's tolerance; Hutchinson is
    # unbiased (its last run is kept: a z-test); the N(0, I) prior costs little on
    # sub-VP (a(T) = 7e-3).
    (err,) = _printed(r"^exact trace .* mean error (\S+) nats$", printed)
    assert abs(float(err)) < 1e-4, err
    diff = np.asarray(ns["out"].log_prob - ns["exact"], np.float64)
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / math.sqrt(len(diff))
    (err,) = _printed(
        r"^with the SDE's prior N\(0, I\): mean error (\S+) nats$", printed
    )
    assert abs(float(err)) < 5e-3, err
    # Encoding then decoding gives the data back.
    np.testing.assert_allclose(ns["back"], ns["x"][:8], atol=1e-3)
    assert float(jnp.std(ns["z"])) > 0.5  # latents spread like the prior's N(0, I)


def _check_controllable_generation(ns: dict, printed: str) -> None:
    # The exact posterior's mean against self-normalised importance sampling of 200,000
    # prior samples (its standard error here is ~0.005).
    (row,) = _printed(
        r"^posterior mean: exact \[(.+)\] importance sampling \[(.+)\]$", printed
    )
    exact, brute = (np.array(r.split(), float) for r in row)
    np.testing.assert_allclose(exact, brute, atol=0.03)
    # Guidance at scale 1 with the exact class posterior: each label's samples are its
    # component's (classified like exact samples of it, within 4 standard errors; the
    # variance ratio within 3).
    rows = _printed(
        r"^label (\d): (\S+)% classified as component \d \(exact samples of it: "
        r"(\S+)%\), variance ratio (\S+) ± (\S+)$",
        printed,
    )
    assert len(rows) == ns["mix"].num_components
    n = ns["NUM_GUIDED"] / len(rows)
    for k, got, want, ratio, se in rows:
        p = float(want) / 100
        assert float(got) / 100 > p - 4 * math.sqrt(p * (1 - p) / n + 1e-6), k
        assert abs(float(ratio) - 1) < 3 * float(se), (k, ratio, se)
    # Imputation: the known coordinates are the observation's, and the replacement
    # method's component weights are near the exact posterior's (measured error 0.05
    # at 100 PC steps; the prior's weights would be 0.4 off).
    assert "known coordinates equal the observation: True" in printed
    rep = sd.metrics.mixture_report(ns["post8"], ns["x8"][:, ~ns["mask"]])
    err = np.max(np.abs(rep.mode_weights - np.asarray(ns["post8"].weights)))
    assert err < 0.1, (rep.mode_weights, ns["post8"].weights)


def _check_train_digits(ns: dict, printed: str) -> None:
    # Each solver's score evaluations, and FD-digits of the same order as that of as
    # many real digits (noise or a broken sampler is far above it).
    rows = _printed(r"^(.+?)\s+(\d+) score evaluations\s+FD-digits\s+(\S+)$", printed)
    (real,) = _printed(r"^real training digits\s+FD-digits\s+(\S+)$", printed)
    nfe = {"PC": 200, "Euler": 200, "DPM": 25}
    assert len(rows) == 3, rows
    for name, n, fd in rows:
        assert int(n) == nfe[re.match(r"[A-Za-z]+", name).group()], (name, n)
        assert 0 < float(fd) < 2 * float(real), (name, fd, real)
    # Bits/dim near the committed model's 1.87 on the whole test split (4.09 uniform).
    ((bpd, se),) = _printed(r"^bits/dim on \d+ test digits: (\S+) ± (\S+) ", printed)
    assert abs(float(bpd) - 1.87) < 0.25 and float(se) < 0.1, (bpd, se)


def _check_bring_your_own_model(ns: dict, printed: str) -> None:
    # The plain-JAX model learned something, and every solve spent its budget.
    assert float(ns["losses"][-100:].mean()) < 0.8 * float(ns["losses"][:100].mean())
    records = ns["records"]
    assert len(records) == 2 * 3 * 2
    for r in records:
        assert r.nfe == r.nfe_budget, r
    # At 50 evaluations with the exact score the ODE solvers reproduce the mixture
    # (variance ratio within 4 standard errors), and the trained model's samples are
    # within twice the floor's sliced W2 to held-out data.
    for r in records:
        if r.nfe_budget != 50:
            continue
        if r.problem == "exact score" and r.sampler != "euler-maruyama":
            ratio, se = r.metrics["variance_ratio"]
            assert abs(ratio - 1) < 4 * se + 0.02, r
        if r.problem == "my model":
            assert r.metrics["sliced_w2"][0] < 2 * r.floor["sliced_w2"][0], r
    assert "| sampler | NFE | sliced_w2 |" in printed


def _check_conditional_and_inverse(ns: dict, printed: str) -> None:
    # The brief conditional training lowered the loss.
    ((first, last),) = _printed(
        r"^\d+ steps: mean loss of the first \d+ steps (\S+), of the last \d+ (\S+)$",
        printed,
    )
    assert float(last) < 0.8 * float(first), (first, last)
    # Classifier-free guidance: one evaluation per step (two network calls), and the
    # committed conditional U-Net's samples are their label's class far above chance
    # (10 %); measured 95-100 % at these sizes, 96-100 % in the benchmark.
    ((nfe, calls),) = _printed(
        r"^(\d+) score evaluations per sample \((\d+) network calls\)$", printed
    )
    assert int(nfe) == ns["STEPS"] and int(calls) == 2 * int(nfe), (nfe, calls)
    rows = _printed(r"^w = +(\S+): accuracy +(\S+)%  FD-digits +(\S+)$", printed)
    assert [float(w) for w, _, _ in rows] == list(ns["SCALES"]), rows
    acc = {float(w): float(a) / 100 for w, a, _ in rows}
    assert acc[0.0] > 0.6 and acc[3.0] > 0.8, acc
    assert all(math.isfinite(float(fd)) and float(fd) > 0 for _, _, fd in rows), rows
    # Inverse problems: projection satisfies the full-row-rank super-resolution
    # measurement to round-off and beats nearest-neighbour upsampling (A^+ y); DPS
    # beats A^+ y on the blur, whose pseudo-inverse amplifies the noise; projection,
    # treating y as exact, is the pseudo-inverse there (within 0.5 dB).
    inv = ns["inverse"]
    truth = ns["truth"]
    psnr = {
        (name, m): ns["psnr"](r[m], truth)
        for name, r in inv.items()
        for m in ("pinv", "projection", "dps")
    }
    sr, blur = "2x super-resolution", "blur (sigma 1 pixel)"
    assert inv[sr]["projection_residual"] < 1e-4, inv[sr]["projection_residual"]
    assert psnr[sr, "projection"] > psnr[sr, "pinv"], psnr
    assert psnr[blur, "dps"] > psnr[blur, "pinv"] + 5, psnr
    assert abs(psnr[blur, "projection"] - psnr[blur, "pinv"]) < 0.5, psnr


def _check_paper_networks(ns: dict, printed: str) -> None:
    # The official checkpoint's score equals the official code's to float32 round-off.
    (rel,) = _printed(r"^score vs the official code: .* = (\S+)$", printed)
    assert float(rel) < 1e-5, rel
    # Three solvers, each spending the evaluations its plan says (the final denoising
    # step is one more), with finite samples of the network's image shape.
    results, n = ns["results"], ns["NUM_SAMPLES"]
    assert len(results) == 3
    pc, dpm, tsit5 = results.values()
    assert pc["nfe"] == 2 * ns["PC_STEPS"] + 1, pc["nfe"]
    assert dpm["nfe"] == ns["ODE_STEPS"] + 1, dpm["nfe"]
    assert tsit5["nfe"] > 0, tsit5["nfe"]
    for r in results.values():
        assert r["samples"].shape == (n, 3, 16, 16)
        assert np.all(np.isfinite(r["samples"]))
    # Bits/dim: one finite value per example, from its log-density and the data's range.
    bpd, ll, x = ns["bpd"], ns["ll"], ns["x_data"]
    assert bpd.shape == (n,) and np.all(np.isfinite(bpd)), bpd
    expected = -(ll.log_prob / x[0].size - math.log(256.0)) / math.log(2.0)
    np.testing.assert_allclose(bpd, expected, rtol=1e-5)


CHECKS = {
    "bring_your_own_model.ipynb": _check_bring_your_own_model,
    "conditional_and_inverse.ipynb": _check_conditional_and_inverse,
    "controllable_generation.ipynb": _check_controllable_generation,
    "paper_networks.ipynb": _check_paper_networks,
    "quickstart.ipynb": _check_quickstart,
    "samplers_and_likelihoods.ipynb": _check_samplers_and_likelihoods,
    "train_digits.ipynb": _check_train_digits,
}


def test_every_notebook_is_checked():
    assert {p.name for p in NOTEBOOKS} == set(CHECKS), "add a check for each notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path):
    namespace, printed = _execute(path)
    CHECKS[path.name](namespace, printed)


# ------------------------------------------------------------ committed outputs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_with_outputs(path):
    """Each notebook is committed executed (the outputs of a full-size run): every
    code cell ran, in order, once, none ended in an error, something was shown, and
    the file stays small enough to read on GitHub. Re-execute with `jupyter nbconvert
    --to notebook --execute --inplace` (README, Quickstart)."""
    assert path.stat().st_size < 1_500_000, f"{path.name}: lower the figures' dpi"
    cells = [
        c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"
    ]
    counts = [c.get("execution_count") for c in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name} is not committed executed in order (execution counts {counts}): "
        "run jupyter nbconvert --to notebook --execute --inplace on it"
    )
    outputs = [o for c in cells for o in c.get("outputs", [])]
    errors = [o for o in outputs if o["output_type"] == "error"]
    assert not errors, f"{path.name}: error outputs {[o['ename'] for o in errors]}"
    assert any(o["output_type"] != "stream" or o["name"] == "stdout" for o in outputs)
