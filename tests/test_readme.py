"""Docs as tests: every shell and Python block of the README runs, in order, in one folder.

The two set-up blocks are checked rather than re-run: the test command must be exactly what
``.ci/run`` runs, and the demo block's ``tensortrace demo`` runs for real. A block preceded by
``<!-- needs-gpu -->`` is skipped without CUDA. The CLI reference is checked against --help.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"(?P<pre><!-- needs-gpu -->\s*)?```(?P<lang>\w+)\n(?P<body>.*?)```", re.S)


def blocks(lang: str) -> list[tuple[str, bool]]:
    return [(m["body"], bool(m["pre"])) for m in FENCE.finditer(README) if m["lang"] == lang]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    env["COLUMNS"] = "100"
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where README commands run, with the repository's examples beside them."""
    d = tmp_path_factory.mktemp("readme")
    (d / "examples").symlink_to(ROOT / "examples")
    return d


class TestSetupCommands:
    def test_there_are_exactly_two(self) -> None:
        """The Set up section holds exactly two commands: the demo and the tests."""
        section = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
        cmds = [m["body"].strip() for m in FENCE.finditer(section)]
        assert len(cmds) == 2
        assert cmds[0].endswith("tensortrace demo")
        assert "pytest" in cmds[1]

    def test_ci_runs_the_readme_test_command(self) -> None:
        """.ci/run runs the README's test command, part for part."""
        section = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
        test_cmd = [m["body"].strip() for m in FENCE.finditer(section)][1]
        ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
        assert test_cmd in ci_lines


class TestShellBlocks:
    def test_every_shell_block_runs(self, workdir: Path) -> None:
        """Each bash block after the set-up exits 0 when run in order (the demo included)."""
        import torch

        bash = blocks("bash")
        demo = bash[0][0].split("&&")[-1].strip()
        r = subprocess.run(["bash", "-c", f"{demo} --out demo-out"], cwd=workdir, env=_env(),
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "first bad layer" in r.stdout and "only batch element 0 matches" in r.stdout
        self._write_python_files(workdir)
        for body, needs_gpu in bash[2:]:
            if needs_gpu and not torch.cuda.is_available():
                continue
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=workdir, env=_env(),
                               capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f"{body}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"

    @staticmethod
    def _write_python_files(workdir: Path) -> None:
        for body, _ in blocks("python"):
            first = body.splitlines()[0]
            if first.startswith("# ") and first[2:].strip().endswith(".py"):
                (workdir / first[2:].strip()).write_text(body)


class TestPythonBlocks:
    def test_every_python_block_runs(self, workdir: Path) -> None:
        """Each Python block that is not a file runs as a script in the README's folder."""
        (workdir / "ref.h5").exists() or subprocess.run(
            ["tensortrace", "record", "examples/translation.py", "-o", "ref.h5", "--steps", "2",
             "--seed", "0", "-q"], cwd=workdir, env=_env(), check=True, timeout=300)
        for body, _ in blocks("python"):
            first = body.splitlines()[0]
            if first.startswith("# ") and first[2:].strip().endswith(".py"):
                continue
            r = subprocess.run([sys.executable, "-c", body], cwd=workdir, env=_env(),
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, f"{body}\n{r.stderr[-3000:]}"


class TestCliReference:
    def test_every_option_is_documented(self) -> None:
        """Every subcommand and every option its --help lists appears in the CLI reference."""
        from tracefmt.cli import build_parser

        section = README.split("## CLI reference", 1)[1].split("\n## ", 1)[0]
        parser = build_parser()
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        for name, p in sub.choices.items():
            line = next((ln for ln in section.splitlines() if f"`tensortrace {name} " in ln
                         or f"`tensortrace {name}`" in ln), None)
            assert line is not None, f"tensortrace {name} is not in the CLI reference"
            for action in p._actions:
                if action.option_strings and action.help != "==SUPPRESS==" and "-h" not in action.option_strings:
                    assert any(o in line for o in action.option_strings), (name, action.option_strings)
