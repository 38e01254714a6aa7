"""The layout tells the architecture: import-linter's contracts (``.importlinter``) hold, a
violating import breaks them, ``ops/`` keeps its stage packages and no module grows too long."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("ops", "assets", "pipeline")
STAGE_PACKAGES = {
    "data",
    "models",
    "distill",
    "baselines",
    "eval",
    "privacy",
    "training",
    "tracking",
}
MAX_PLAIN_MODULES = 6
MAX_LINES = 420  # "about 400": a module past this is split by responsibility


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), str(root / ".importlinter"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy_tree(dest: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", dest / ".importlinter")
    return dest


def test_import_contracts_are_kept():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        # a lower layer reaching up: the data stage importing the benchmark
        ("ops/data/prompts.py", "import ops.eval.runner", "ops: stage packages above"),
        # compute importing the orchestrator
        ("ops/models/presets.py", "import dagster", "ops never imports Dagster"),
        # a launcher importing the assets that use it
        ("pipeline/launcher/commands.py", "import assets.teacher", "pipeline definitions"),
    ],
)
def test_a_violating_import_breaks_a_contract(tmp_path, module, bad_import, contract):
    root = _copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n{bad_import}  # noqa\n")
    result = _lint(root)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in " ".join(broken.split()), result.stdout


def test_ops_top_level_is_stage_packages_and_a_small_core():
    ops = REPO / "ops"
    plain = sorted(p.name for p in ops.glob("*.py") if p.name != "__init__.py")
    packages = {p.name for p in ops.iterdir() if (p / "__init__.py").is_file()}
    assert len(plain) <= MAX_PLAIN_MODULES, plain
    assert packages >= STAGE_PACKAGES, STAGE_PACKAGES - packages


def test_no_source_module_is_too_long():
    long = {
        str(p.relative_to(REPO)): n
        for name in PACKAGES
        for p in (REPO / name).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long
