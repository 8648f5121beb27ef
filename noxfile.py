"""Automation: every check CI runs, runnable the same way on a laptop.

Sessions install the project with ``-c constraints.txt`` so torch stays at the CPU
build pinned there; users of the package keep the ranges in ``pyproject.toml``.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
ROOT = Path(__file__).parent
CONSTRAINTS = ("-c", "constraints.txt")
ALL_EXTRAS = ".[worker,model,prometheus,dns,progress,plot]"
#: The development dependency groups of pyproject.toml (test tools, the demo's plots).
GROUPS = nox.project.dependency_groups(
    nox.project.load_toml(ROOT / "pyproject.toml"), "test", "demo"
)
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _install(session: nox.Session, target: str = ALL_EXTRAS, *extra: str) -> None:
    session.install(*CONSTRAINTS, "-e", target, *GROUPS, *extra)


def _system_deps(session: nox.Session) -> None:
    session.run("python", "tools/system_deps.py")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The default suite: everything but the `slow` marker; under 10 minutes on 2 cores."""
    _install(session)
    _system_deps(session)
    session.run("pytest", "-m", "not slow", "--durations=25", *session.posargs, env=OFFLINE)


@nox.session(python=PYTHON)
def slow(session: nox.Session) -> None:
    """Long suites (scale properties, soak and failure scenarios at full size)."""
    _install(session)
    _system_deps(session)
    session.run("pytest", "-m", "slow", *session.posargs, env=OFFLINE)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff, mypy --strict on src/, and the import layering of docs/architecture.md."""
    _install(session, ALL_EXTRAS, "ruff", "mypy", "import-linter", "types-PyYAML")
    session.run("ruff", "check", "src", "tests", "examples", "benchmarks", "tools", "noxfile.py")
    session.run("ruff", "format", "--check", "src")
    session.run("mypy")
    session.run("lint-imports")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build docs/ with warnings as errors and run every code example in them."""
    _install(session, ".[dns,prometheus]", "mkdocs")
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"))
    session.run("pytest", "tests/test_docs.py", *session.posargs, env=OFFLINE)


@nox.session(python=PYTHON)
def mutation(session: nox.Session) -> None:
    """Mutation testing per module against the fast tests that cover it (not in CI's
    default run; minutes for pure modules, an hour or more for those whose tests start
    servers, on 2 cores). Args: module names, e.g. `pool retry`; `--rejudge dns` judges
    a finished run's survivors again by the tests as they are now. MUTATION_SAMPLE=N
    judges a seeded random sample of N mutants (for `transport`, whose full run takes
    many hours) and prints its score with a 95% interval."""
    _install(session, ALL_EXTRAS, "mutmut==3.8.1")
    _system_deps(session)
    session.run("nice", "-n", "15", "python", "tools/mutation.py", *session.posargs, external=True)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Every benchmark in benchmarks/: prints figures, writes bench-results/*.json|md."""
    _install(session)
    _system_deps(session)
    scripts = sorted(ROOT.glob("benchmarks/bench_*.py"))
    only = set(session.posargs)
    for script in scripts:
        if only and script.stem not in only and script.stem.removeprefix("bench_") not in only:
            continue
        session.run("python", str(script), env=OFFLINE)


@nox.session(python=PYTHON)
def bench_dedup(session: nox.Session) -> None:
    """Dedup + EmbeddingCache vs every text sent, on a corpus with 30% duplicates over
    two real workers: prints figures, writes bench-results/dedup.json|md."""
    _install(session)
    session.run("python", "benchmarks/bench_dedup.py", *session.posargs, env=OFFLINE)


@nox.session(python=PYTHON)
def bench_priority(session: nox.Session) -> None:
    """Interactive and bulk traffic on two real workers, with and without priorities
    (about 2 minutes); prints figures, writes bench-results/priority.json|md."""
    _install(session)
    session.run("python", "benchmarks/bench_priority.py", *session.posargs, env=OFFLINE)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job: 3 real workers on loopback, a corpus balanced over them, a report."""
    _install(session, ".[worker,model,prometheus]")
    session.run("python", "examples/demo.py", *session.posargs, env={**OFFLINE, **os.environ})
