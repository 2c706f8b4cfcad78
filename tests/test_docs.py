"""Every ```python block marked `<!-- runnable -->` in docs/*.md runs.

The blocks of one page run in order in one namespace (like a notebook), so a later block
may use what an earlier one defined. The API reference must be up to date with the code.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"<!--\s*runnable\s*-->\s*\n```python\n(.*?)\n```", re.S)


def runnable_blocks(path):
    return BLOCK.findall(path.read_text())


PAGES = sorted(p for p in DOCS.glob("*.md") if runnable_blocks(p))


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_doc_snippets_run(page):
    namespace = {"__name__": f"docs_{page.stem}"}
    for i, src in enumerate(runnable_blocks(page)):
        try:
            exec(compile(src, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{page.name}, runnable block {i} failed: {type(e).__name__}: {e}\n---\n{src}") from e


def test_pages_have_snippets():
    names = {p.name for p in PAGES}
    assert {"getting_started.md", "transforms.md", "sharp_bits.md"} <= names


def test_api_reference_is_current():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_api_docs.py"), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_readme_example_runs():
    import pathlib
    import re
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
