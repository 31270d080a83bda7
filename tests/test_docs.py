"""Every ```python block of README.md and docs/*.md runs, as written, on this machine (GPU when there is one, else
CPU), so a snippet cannot rot. A block that cannot run anywhere in CI (it needs code we do not ship) is marked by the
line `<!-- docs-test: skip (why) -->` right before its fence and is reported as skipped with that reason."""
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((.*?)\)\s*-->\s*$")


def blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """(first line number, code, skip reason or None) of each python block in path."""
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        out.append((line, m.group(1), skip.group(1) if skip else None))
    return out


CASES = [pytest.param(p, code, skip, id=f"{p.relative_to(ROOT)}:{line}")
         for p in DOCS for line, code, skip in blocks(p)]


def test_the_readme_and_area_pages_have_snippets_to_run():
    def runnable(*names):
        return sum(1 for p in CASES if p.values[0].name in names and p.values[2] is None)
    assert runnable("README.md") >= 1
    assert runnable("gan.md", "finegrained.md", "ssl.md") >= 8


@pytest.mark.parametrize("path,code,skip", CASES)
def test_snippet_runs(path, code, skip):
    if skip is not None:
        pytest.skip(skip)
    with warnings.catch_warnings():
        # Without the compiled library the ops run their references and say so once; the snippet is still right.
        warnings.filterwarnings("ignore", message=".*(reference|compiled).*")
        exec(compile(code, f"{path.name} snippet", "exec"), {"__name__": "__docs__"})
