"""MkDocs hook: the Guide and Benchmarks pages, generated at build time from the
README's guides and `benchmarks/README.md`, so the site never holds a stale copy.

Relative links are rewritten for the site: images (e.g. `benchmarks/results/*.png`)
are copied into it at the same path, `benchmarks/README.md` becomes the Benchmarks
page, and any other file of the repository links to it on GitHub."""

import pathlib
import re

from mkdocs.structure.files import File


ROOT = pathlib.Path(__file__).resolve().parents[1]
# The README's sections that make the Guide: from the first to before the second.
GUIDE_FROM, GUIDE_TO = "## Quickstart", "## Tests"
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
_IMAGES = (".png", ".jpg", ".jpeg", ".svg", ".gif")


def _section(text: str, start: str, end: str) -> str:
    lines = text.splitlines()
    heads = [i for i, line in enumerate(lines) if line.strip() in (start, end)]
    i = next(i for i in heads if lines[i].strip() == start)
    j = next(j for j in heads if lines[j].strip() == end and j > i)
    return "\n".join(lines[i:j]) + "\n"


def _rewrite(text: str, base: pathlib.Path, repo_url: str, images: set) -> str:
    """Links of a markdown file in `base` (relative to the repository root) -> links
    that resolve on the site (pages at its root)."""

    def fix(m: re.Match) -> str:
        bang, label, target = m.groups()
        if re.match(r"^[a-z]+:|^#", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        rel = (base / path).as_posix()
        rel = str(pathlib.PurePosixPath(*_normalise(rel.split("/"))))
        if rel == "benchmarks/README.md":
            new = "benchmarks.md"
        elif rel == "README.md":
            new = "guide.md"
        elif rel.lower().endswith(_IMAGES) and (ROOT / rel).is_file():
            images.add(rel)
            new = rel
        else:
            new = f"{repo_url.rstrip('/')}/blob/main/{rel}"
        return f"{bang}[{label}]({new}{'#' + anchor if anchor else ''})"

    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        out.append(line if fenced else _LINK.sub(fix, line))
    return "\n".join(out) + "\n"


def _normalise(parts: list[str]) -> list[str]:
    out: list[str] = []
    for p in parts:
        if p in ("", "."):
            continue
        if p == "..":
            out.pop()
        else:
            out.append(p)
    return out


def on_files(files, config):
    """Add `guide.md`, `benchmarks.md` and the images they show."""
    repo_url = config.get("repo_url") or ""
    images: set = set()
    readme = (ROOT / "README.md").read_text()
    guide = "# Guide\n\nThe README's guides.\n\n" + _section(
        readme, GUIDE_FROM, GUIDE_TO
    )
    latest = _section(readme, "## Benchmarks", "## Versions").replace(
        "## Benchmarks", "## Latest figures (from the README)", 1
    )
    bench = (ROOT / "benchmarks" / "README.md").read_text()
    bench = bench.split("\n", 1)[1] if bench.startswith("# ") else bench
    pages = {
        "guide.md": _rewrite(guide, pathlib.PurePosixPath("."), repo_url, images),
        "benchmarks.md": "# Benchmarks\n\n"
        + _rewrite(latest, pathlib.PurePosixPath("."), repo_url, images)
        + "\n## The benchmarks (`benchmarks/README.md`)\n"
        + _rewrite(bench, pathlib.PurePosixPath("benchmarks"), repo_url, images),
    }
    for name, content in pages.items():
        files.append(File.generated(config, name, content=content))
    for rel in sorted(images):
        files.append(File.generated(config, rel, abs_src_path=str(ROOT / rel)))
    return files
