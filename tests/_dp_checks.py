"""Data-parallel checks that need several devices, run in a subprocess by
`tests/test_data_parallel.py` (JAX fixes the device count at start-up).

- `python tests/_dp_checks.py checks`: with 8 CPU devices
  (`XLA_FLAGS=--xla_force_host_platform_device_count=8`), every single-host check in
  one process; prints one JSON line `{"case": {...measurements...}, ...}`.
- `python tests/_dp_checks.py cli ARG...`: `scoresde ARG...` (one process of a
  multi-process run).

Both run with the suite's strictness: jaxtyping + beartype on the package and
`jax_numpy_rank_promotion="raise"`.
"""

import json
import sys
import tempfile
import traceback

import jax
from jaxtyping import install_import_hook


jax.config.update("jax_numpy_rank_promotion", "raise")
with install_import_hook("scoresde_diffrax", "beartype.beartype"):
    import scoresde_diffrax as sd
    from scoresde_diffrax import cli


def _arrays(tree):
    import equinox as eqx

    return jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))


def _max_diff(a, b) -> float:
    import numpy as np

    la, lb = _arrays(a), _arrays(b)
    assert len(la) == len(lb)
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(la, lb, strict=True)
    )


def _identical(a, b) -> bool:
    import numpy as np

    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(_arrays(a), _arrays(b), strict=True)
    )


def checks() -> dict:
    import jax.random as jr
    import numpy as np
    from jax.sharding import AxisType, Mesh

    from scoresde_diffrax import _train

    out: dict = {"device_count": jax.device_count()}
    sde = sd.VPSDE()
    data = sd.data.Dataset(sd.data.moons(jr.key(0), 1024), None, name="moons")
    model = sd.nn.MLPScore((2,), width=32, depth=2, key=jr.key(1))
    kw = dict(
        num_steps=40,
        batch_size=64,
        steps_per_call=20,
        learning_rate=1e-2,
        warmup_steps=5,
        progress=False,
    )

    def run(case, fn):
        try:
            out[case] = fn()
        except Exception as e:  # noqa: BLE001
            out[case] = {"error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()

    ref = sd.train(jr.key(2), model, sde, data, **kw)
    explicit = jax.make_mesh((8,), ("batch",))
    res8 = {}

    def vs_one_device(mesh):
        res = sd.train(jr.key(2), model, sde, data, sharding=mesh, **kw)
        res8.setdefault(id(mesh), res)
        leaves = _arrays((res.model, res.ema_model, res.state.opt_state))
        return {
            "mesh_axis_types": [str(t) for t in mesh.axis_types],
            "num_losses": len(res.losses),
            "loss_max_abs_diff": float(np.max(np.abs(res.losses - ref.losses))),
            "param_max_abs_diff": _max_diff(res.model, ref.model),
            "ema_max_abs_diff": _max_diff(res.ema_model, ref.ema_model),
            "loss_decreased": bool(res.losses[-10:].mean() < res.losses[:10].mean()),
            "all_replicated_on_mesh": all(
                x.is_fully_replicated and len(x.sharding.device_set) == 8
                for x in leaves
            ),
        }

    run("make_mesh_8", lambda: vs_one_device(explicit))
    mesh2d = Mesh(
        np.array(jax.devices()).reshape(4, 2),
        ("data", "replica"),
        axis_types=(AxisType.Auto,) * 2,
    )
    run("mesh_4x2", lambda: vs_one_device(mesh2d))

    def compiled():
        # The program of one chunk: is the batch really split, with all-reduces?
        import equinox as eqx

        mesh = sd._sharding.auto_mesh(explicit)
        opt = sd.adam_with_warmup(1e-2, 5, 1.0)
        params, static = eqx.partition(model, eqx.is_inexact_array)
        state = _train.TrainState(
            model, model, opt.init(params), jax.numpy.asarray(0), jr.key(2)
        )
        replicated = sd._sharding.replicated(mesh)
        state, d = sd._sharding.put_replicated((state, data), replicated)
        config = _train._ChunkConfig(
            static=static,
            sde=sde,
            data=d,
            loss=sd.DSMLoss(),
            optimizer=opt,
            batch_size=64,
            ema_decay=0.9999,
            length=20,
            unroll=False,
            batch_sharding=sd._sharding.batch_sharding(
                mesh, (64,), batch_name="batch_size"
            ),
            replicated=replicated,
        )
        text = (
            _train._run_chunk.lower(state, jax.numpy.asarray(40), config)
            .compile()
            .compiled.as_text()
        )
        return {
            "all_reduce": text.count("all-reduce("),
            "per_device_batch_8x2": "f32[8,2]" in text,
            "full_batch_64x2": "f32[64,2]" in text,
        }

    run("compiled", compiled)

    def bad_batch():
        try:
            sd.train(
                jr.key(2),
                model,
                sde,
                data,
                sharding=explicit,
                **kw | {"batch_size": 60},
            )
        except ValueError as e:
            return {"raised": "ValueError", "message": str(e)}
        return {"raised": None}

    run("bad_batch", bad_batch)

    def bad_type():
        try:
            sd.train(jr.key(2), model, sde, data, sharding="batch", **kw)
        except TypeError as e:
            return {"raised": "TypeError", "message": str(e)}
        return {"raised": None}

    run("bad_type", bad_type)

    def resume():
        full = res8[id(explicit)]
        with tempfile.TemporaryDirectory() as d:
            ck = dict(checkpoint_dir=d, checkpoint_every=20, sharding=explicit)
            first = sd.train(
                jr.key(2), model, sde, data, **kw | {"num_steps": 20}, **ck
            )
            second = sd.train(jr.key(2), model, sde, data, **kw, **ck, resume=True)
            loaded, meta = sd.load_checkpoint(d)
        losses = np.concatenate([first.losses, second.losses])
        return {
            "steps": [len(first.losses), len(second.losses), meta["step"]],
            "losses_identical": bool(np.array_equal(losses, full.losses)),
            "params_identical": _identical(second.model, full.model),
            "ema_identical": _identical(second.ema_model, full.ema_model),
            "loaded_is_ema": _identical(loaded, full.ema_model),
        }

    run("resume", resume)

    def cli_bad_batch():
        import contextlib
        import io

        err = io.StringIO()
        with tempfile.TemporaryDirectory() as d, contextlib.redirect_stderr(err):
            code = cli.main(
                ["train", "--data", "moons", "--sde", "vp", "--model", "mlp"]
                + ["--steps", "5", "--batch-size", "12", "--data-parallel"]
                + ["--out", d, "--quiet"]
            )
        return {"code": code, "stderr": err.getvalue()}

    run("cli_bad_batch", cli_bad_batch)

    def cli_devices():
        # `--data-parallel` train and sample: what each command reports about the
        # devices holding its results (the trained parameters; the samples' split).
        import contextlib
        import io

        out = {}
        with tempfile.TemporaryDirectory() as d:
            ck = d + "/ck"
            for name, argv in (
                (
                    "train",
                    ["train", "--data", "moons", "--sde", "vp", "--model", "mlp"]
                    + ["--steps", "4", "--batch-size", "16", "--steps-per-call", "4"]
                    + ["--out", ck, "--quiet", "--data-parallel"],
                ),
                (
                    "sample",
                    ["sample", "--checkpoint", ck, "--num-samples", "16"]
                    + ["--solver", "euler-maruyama", "--steps", "4"]
                    + ["--out", d + "/x.npy", "--data-parallel"],
                ),
            ):
                stdout, stderr = io.StringIO(), io.StringIO()
                with (
                    contextlib.redirect_stdout(stdout),
                    contextlib.redirect_stderr(stderr),
                ):
                    code = cli.main(argv)
                out[name] = {
                    "code": code,
                    "stdout": stdout.getvalue(),
                    "stderr": stderr.getvalue(),
                }
        return out

    run("cli_devices", cli_devices)

    def named_sharding():
        from jax.sharding import NamedSharding, PartitionSpec

        from scoresde_diffrax._sharding import batch_sharding

        given = NamedSharding(mesh2d, PartitionSpec("data"))
        kept = batch_sharding(given, (12, 2), batch_name="num_samples") == given
        try:
            batch_sharding(given, (6, 2), batch_name="num_samples")
        except ValueError as e:
            return {"kept": kept, "message": str(e)}
        return {"kept": kept, "message": None}

    run("named_sharding", named_sharding)
    return out


if __name__ == "__main__":
    if sys.argv[1] == "checks":
        print(json.dumps(checks()))
    elif sys.argv[1] == "cli":
        sys.exit(cli.main(sys.argv[2:]))
    else:
        sys.exit(f"unknown mode {sys.argv[1]!r}")
