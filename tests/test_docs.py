"""The API reference: `mkdocs build --strict` succeeds (every cross-reference in the
docstrings resolves), and every public name is on a page of `docs/api/`."""

import pathlib
import subprocess
import sys
import types

import scoresde_diffrax as sd


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _public(module, prefix):
    return {
        f"{prefix}.{n}"
        for n in dir(module)
        if not n.startswith("_")
        and not isinstance(getattr(module, n), types.ModuleType)
    }


def _bench_public():
    """`sd.bench`'s own names (not those it imports)."""
    return {
        name
        for name in _public(sd.bench, "scoresde_diffrax.bench")
        if getattr(
            getattr(sd.bench, name.rsplit(".", 1)[1]), "__module__", sd.bench.__name__
        )
        in (sd.bench.__name__, "builtins")
    }


def test_every_public_name_is_documented():
    pages = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    documented = {
        line.removeprefix("::: ").strip()
        for line in pages.splitlines()
        if line.startswith("::: ")
    }
    public = (
        _public(sd, "scoresde_diffrax")
        | _public(sd.nn, "scoresde_diffrax.nn")
        | _public(sd.data, "scoresde_diffrax.data")
        | _public(sd.metrics, "scoresde_diffrax.metrics")
        | _public(sd.operators, "scoresde_diffrax.operators")
        | _public(sd.pictures, "scoresde_diffrax.pictures")
        | _bench_public()
    )
    assert public - documented == set(), "add these to docs/api/*.md"
    assert documented - public == set(), "these are documented but not public"


def test_mkdocs_build_strict(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", tmp_path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    page = (tmp_path / "api" / "sampling" / "index.html").read_text()
    assert "scoresde_diffrax.sample" in page and "Arguments" in page
