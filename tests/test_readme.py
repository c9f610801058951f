"""Every command in the README runs as written: each ``python run.py ...`` line passes the command-line check that
``run.py`` does before Hydra starts (every option exists, every value has its option's type, every group option is
there), and each ``python -m ssl4gie...`` module answers ``--help``."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
from helpers import ROOT

from ssl4gie.run.options import check_overrides


def readme_commands() -> list[list[str]]:
    """The commands of the README's code blocks as argument lists: continuation lines joined, comments dropped,
    ``a && b`` as two commands."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command: list[str] = []
            for word in [*shlex.split(line, comments=True), "&&"]:
                if word == "&&":
                    commands += [command] if command else []
                    command = []
                else:
                    command.append(word)
    return commands


def commands_of(program: list[str]) -> list[list[str]]:
    """The arguments of every README command that starts with ``program``."""
    return [words[len(program) :] for words in readme_commands() if words[: len(program)] == program]


RUNS = commands_of(["python", "run.py"])
MODULES = sorted(
    {args[0] for args in commands_of(["python", "-m"]) if args and args[0].startswith("ssl4gie")}
)


def test_the_readme_shows_runs_and_modules():
    assert len(RUNS) >= 20 and {"ssl4gie.results", "ssl4gie.fetch", "ssl4gie.bench"} <= set(MODULES)


@pytest.mark.parametrize("args", RUNS, ids=[" ".join(a)[:80] for a in RUNS])
def test_each_run_command_passes_the_command_line_check(args):
    check_overrides([a for a in args if not a.startswith("-")])


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_each_module_answers_help(module):
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]


def heading_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def test_every_link_inside_the_readme_finds_its_heading():
    text = (ROOT / "README.md").read_text()
    anchors = {heading_anchor(t) for t in re.findall(r"^#{1,4} (.+)$", text, re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert len(links) >= 20 and not links - anchors, sorted(links - anchors)


def test_the_readme_names_no_path_outside_the_repository():
    """No ``../`` path, no folder of the machine the checkout sits on, no home folder."""
    text = (ROOT / "README.md").read_text()
    outside = [r"(?<!\.)\.\./\w", r"/home/\w", r"/Users/\w", "/root/"]
    if len(ROOT.resolve().parts) > 2:  # the folder holding the checkout, unless that is /
        outside.append(re.escape(f"{ROOT.resolve().parent}/"))
    assert not re.findall("|".join(outside), text)
