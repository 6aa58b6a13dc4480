"""The docs site builds with ``mkdocs build --strict`` (a broken link or anchor fails), and
its generated pages say what the code and the benchmark say: every flag with its help
text, every error class, every ``beam-zdl`` sub-command, the figures of
``bench/results.json``. README stays short and installs what ``make dist`` builds.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from beam_zdl import errors
from beam_zdl.config import add_zdl_arguments

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _text(page: Path) -> str:
    """A page's visible text, tags removed and whitespace collapsed."""
    raw = re.sub(r"<(script|style)\b.*?</\1>", " ", page.read_text(), flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", raw)).split())


def _flags() -> dict[str, str]:
    """Each flag's help text, asked of argparse (not of the docs generator)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_zdl_arguments(parser)
    helps = {}
    for dest in vars(parser.parse_args([])):
        (action,) = [a for a in parser._actions if a.dest == dest]
        helps[f"--{dest}"] = " ".join(str(action.help).split())
    return helps


def test_every_flag_is_in_the_options_reference(site: Path) -> None:
    text = _text(site / "reference" / "options" / "index.html")
    flags = _flags()
    assert len(flags) >= 20
    missing = [flag for flag in flags if flag not in text]
    assert not missing, f"flags missing from docs/reference/options.md: {missing}"
    wrong = [flag for flag, help_text in flags.items() if help_text not in text]
    assert not wrong, f"help text of these flags is not shown as written: {wrong}"
    assert "--bootstrap_servers" in text  # Beam's flag, which beam_zdl reuses


def test_every_error_class_has_advice_in_operations(site: Path) -> None:
    page = (site / "operations" / "index.html").read_text()
    missing = [name for name in errors.__all__ if f'id="{name.lower()}"' not in page]
    assert not missing, f"docs/operations.md has no section for {missing}"


def test_cli_reference_and_file_formats_come_from_the_code(site: Path) -> None:
    cli = _text(site / "reference" / "cli" / "index.html")
    for command in ("inspect", "migrate", "verify", "receive"):
        assert f"beam-zdl {command} --help" in cli
    assert "--version" in cli
    formats = _text(site / "formats" / "index.html")
    assert 'MAGIC := b"BZDLWAL" 0x02' in formats and 'magic b"BZDLCKP"' in formats


def test_performance_figures_are_those_of_results_json(site: Path) -> None:
    text = _text(site / "performance" / "index.html")
    results = json.loads((ROOT / "bench" / "results.json").read_text())["results"]
    measured = {k: v for k, v in results.items() if "records_per_s" in v}
    assert len(measured) >= 5
    for name, row in measured.items():
        assert f"{row['records_per_s'] / 1000:.0f}k" in text, name
        assert f"{row['peak_tree_rss_mb']:,.0f} MB" in text, name


def test_readme_is_short_and_installs_the_built_wheel() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "pip install dist/beam_zdl-*.whl" in readme
    assert "pip install beam_zdl" not in readme.replace("pip install beam_zdl-", "")
    assert "### Settings beam_zdl guards" in readme
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), f"README links to a missing {target}"
