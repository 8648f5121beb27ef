"""Mutation testing, one module at a time, against the fast tests that cover it.

Each module gets its own work folder under ``build/mutation/<module>/`` with a
``setup.cfg`` that tells mutmut which file to mutate and which tests to run, so a
mutant of ``health.py`` is judged by the health tests only (minutes, not hours) and
one module's run never invalidates another's cache. Prints one line per module and
writes ``build/mutation/scores.json``.

Usage: ``python tools/mutation.py [module ...]`` (default: every module in ``MODULES``);
``MUTATION_COMMIT`` picks the commit whose ``src/`` is mutated (default ``HEAD``),
``MUTATION_CHILDREN`` the number of parallel test processes (default 2),
``MUTATION_RESUME=1`` carries on an interrupted run of the same commit (the work
folder is kept; without it each run starts afresh).

``python tools/mutation.py --rejudge <module> [mutant ...]`` judges a finished run's
survivors again (or the mutants named) by the work tree's tests as they are now:
each mutant is applied to the run's exported ``src`` and the module's tests run
against it. Why: a full run of a module whose tests start servers takes an hour;
after tests were added for some survivors, only those need judging again. Writes
``rejudged`` (mutant -> killed / survived) into ``scores.json``.
``MUTATION_SAMPLE=N`` judges a uniform random sample of N mutants (``MUTATION_SEED``,
default 0, picks it) instead of all of them, and scores the sample with a 95% Wilson
interval. Why: a full run of ``transport`` costs many hours on 2 cores (each surviving
mutant reruns every hedging and failure test that covers it); a sample's score is an
unbiased estimate of the full one, and its survivors are a fair draw of the full run's.
With ``MUTATION_RESUME=1 MUTATION_SAMPLE_REST=1`` the sample is drawn from the mutants an
interrupted full run left unjudged: the judged part stays exact, the rest is estimated.

``MUTATION_REJUDGE_TESTS`` (space-separated pytest ids) judges by those tests instead
of the module's selection. The tests are first run on the unmutated ``src``: if they
fail there (a test of a fix made after the run), rejudging stops, since every mutant
would read as killed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"

#: module -> (file to mutate, the fast tests that claim its behaviour)
MODULES: dict[str, tuple[str, list[str]]] = {
    "_hints": ("src/embedbalance/_hints.py", ["tests/core/test_hints.py"]),
    "health": (
        "src/embedbalance/health.py",
        [
            "tests/core/test_health.py",
            "tests/core/test_health_edges.py",
            "tests/core/test_backend.py",
            "tests/core/test_slow_start.py",
        ],
    ),
    "retry": (
        "src/embedbalance/retry.py",
        ["tests/core/test_retry.py", "tests/core/test_retry_edges.py"],
    ),
    "strategies": (
        "src/embedbalance/strategies.py",
        [
            "tests/core/test_strategy_properties.py",
            "tests/core/test_strategy_edges.py",
            "tests/core/test_gpu_priority.py",
        ],
    ),
    # The balancers and metrics sit under every core test, so mutmut picks, per
    # mutant, whichever of them run the mutated function.
    "load": ("src/embedbalance/load.py", ["tests/core"]),
    "balancers": ("src/embedbalance/balancers.py", ["tests/core"]),
    "pool": (
        "src/embedbalance/pool.py",
        [
            "tests/core/test_pool.py",
            "tests/core/test_pool_events.py",
            "tests/core/test_pool_mutants.py",
            "tests/core/test_pool_bulk.py",
            "tests/core/test_pool_state_machine.py",
            "tests/core/test_health.py",
            "tests/core/test_overload.py",
            "tests/core/test_slow_start.py",
            # The pool's canary, model routing, zones and attempt deadlines are
            # claimed by these (fast, pure) tests; without them mutmut finds no test
            # that reaches those methods.
            "tests/core/test_canary_pool.py",
            "tests/core/test_canary_models.py",
            "tests/core/test_models.py",
            "tests/core/test_models_zones_machine.py",
            "tests/core/test_locality.py",
            "tests/core/test_metric_axis.py",
            "tests/core/test_server_hints.py",
            # per-backend percentiles and spare-slot leases for hedging
            "tests/core/test_hedge_policy.py",
        ],
    ),
    "_batching": (
        "src/embedbalance/_batching.py",
        ["tests/client/test_batching.py", "tests/client/test_batching_edges.py"],
    ),
    "dns": ("src/embedbalance/dns.py", ["tests/dns"]),
    "health_runner": (
        "src/embedbalance/health_runner.py",
        [
            # Fast and exact first (no sockets): most mutants die here in milliseconds.
            "tests/core/test_health_runner_units.py",
            "tests/core/test_canary_pool.py",
            "tests/core/test_canary_models.py",
            "tests/transport/test_info_model.py",
            # Real sockets, seconds each: probes, both checkers against a real server,
            # canaries through the transports, probes kept out of traces. The failure
            # suites (kills, hangs, zones; a minute and more) are left out: every
            # surviving mutant would run them in full.
            "tests/transport/test_health_probes_real.py",
            "tests/transport/test_promises.py",
            "tests/transport/test_canary_transport.py",
            "tests/transport/test_tracing.py",
        ],
    ),
    # The transports' and clients' tests start real servers; these are the ones that
    # finish in seconds (the hedging and deadline conformance suites take minutes and
    # would be rerun in full for every surviving mutant).
    "transport": (
        "src/embedbalance/transport.py",
        [
            # mock transports only, a second in all: most mutants die here
            "tests/transport/test_transport_parity.py",
            "tests/transport/test_async_race.py",
            "tests/transport/test_answer_check.py",
            "tests/transport/test_race_leftovers.py",
            "tests/transport/test_routing.py",
            "tests/transport/test_inner_transports.py",
            "tests/transport/test_hedge_losers_sync.py",
            "tests/transport/test_canary_transport.py",
            "tests/transport/test_fork_locks.py",
            "tests/transport/test_start_once.py",
            "tests/transport/test_runner.py",
            "tests/transport/test_request_model.py",
            "tests/transport/test_routing_real.py",
            "tests/transport/test_bulk_overload.py",
            "tests/transport/test_tracing.py",
            "tests/transport/test_transport_errors.py",
            "tests/transport/test_promises.py",
            "tests/test_config.py",
            "tests/conformance/test_errors.py",
            # the client's answer checks run inside the transport (a replica answering
            # garbage is retried elsewhere): fakes, no model, seconds in all
            "tests/client/test_server_semantics.py",
            # hedging, hung backends, kills and the async background: seconds each
            "tests/transport/test_load.py",
            "tests/transport/test_failures.py",
            "--deselect",
            "tests/transport/test_load.py::test_32_threads_share_one_transport_with_exact_counts",
            "--deselect",
            "tests/transport/test_load.py::test_peak_ewma_learns_a_slow_backend_round_robin_does_not",
            # learned shares under real time: on a machine busy with other mutants the
            # clean run itself can fail them (they stay in the default run)
            "--deselect",
            "tests/transport/test_load.py::test_load_aware_balancers_learn_a_slow_backend_async",
        ],
    ),
    "client": (
        "src/embedbalance/client.py",
        [
            "tests/client/test_batching.py",
            "tests/client/test_batching_edges.py",
            "tests/client/test_priority_client.py",
            "tests/client/test_cache.py",
            "tests/client/test_server_semantics.py",
            "tests/client/test_sync_client.py",
            "tests/client/test_async_client.py",
            "tests/client/test_client_twins.py",
            "tests/client/test_client_parity.py",
            "tests/test_config.py",
        ],
    ),
    "batcher": (
        "src/embedbalance_worker/batcher.py",
        [
            # First: pure, fast, and every wait bounded, so most mutants die here
            # before the model-loading tests below run.
            "tests/worker/test_batcher_logic.py",
            "tests/worker/test_batcher.py",
            "tests/worker/test_priority_batcher.py",
            "tests/worker/test_liveness.py",
        ],
    ),
    "parsing": (
        "src/embedbalance_worker/parsing.py",
        [
            "tests/worker/test_parsing.py",
            "tests/worker/test_errors.py",
            "tests/worker/test_routes.py",
            "tests/worker/test_malformed.py",
        ],
    ),
}


def _commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def _workdir(name: str, target: str, tests: list[str], commit: str) -> Path:
    """A fresh folder: ``src`` exported from ``commit`` (the score belongs to a commit,
    not to whatever is half-edited in the work tree), the work tree's tests."""
    work = WORK / name
    marker = work / "COMMIT"
    if os.environ.get("MUTATION_RESUME") and marker.exists() and marker.read_text() == commit:
        return work  # mutmut carries on with the mutants not judged yet
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    marker.write_text(commit)
    archive = subprocess.run(
        ["git", "archive", commit, "src"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(work, filter="data")
    # tests/helpers read tools/; the config tests read docs/config.md
    for link in ("tests", "tools", "docs", "pyproject.toml"):
        (work / link).symlink_to(ROOT / link)
    package = "/".join(target.split("/")[:2])
    # A fixed hypothesis seed: a mutant is judged by the same examples as the clean run.
    args = ["-m", "not slow", "-p", "no:cacheprovider", "--hypothesis-seed=0", *tests]
    selection = "\n    ".join(args)
    # torch's thread pools do not survive a fork of a process that has run a forward
    # pass (mutmut's default forks its main process, which ran the suite once): the
    # worker's modules fork from a clean server instead, and loading the model is a
    # fixed cost that the per-test timings mutmut budgets with leave out. A mutant that
    # hangs waits (timings + constant) x multiplier: 5 x, not mutmut's 15 x, leaves the
    # model load ample room and keeps each hang under a minute.
    torch = (
        "process_isolation = forkserver\ntimeout_constant = 5\ntimeout_multiplier = 5\n"
        if target.startswith("src/embedbalance_worker/")
        else ""
    )
    (work / "setup.cfg").write_text(
        "[mutmut]\n"
        f"{torch}"
        f"source_paths = {package}\n"
        f"only_mutate = {target}\n"
        "also_copy =\n    tools\n    docs\n"
        f"pytest_add_cli_args_test_selection =\n    {selection}\n"
    )
    return work


def run(name: str, commit: str) -> dict[str, object]:
    target, tests = MODULES[name]
    work = _workdir(name, target, tests, commit)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    children = os.environ.get("MUTATION_CHILDREN", "2")
    mutmut = [sys.executable, "-m", "mutmut"]
    size = int(os.environ.get("MUTATION_SAMPLE", "0"))
    if size:
        return _run_sample(work, target, env, children, size)
    subprocess.run([*mutmut, "run", "--max-children", children], cwd=work, env=env, check=False)
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=work, env=env, check=True)
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    tested = int(stats.get("total", 0)) - int(stats.get("skipped", 0))
    caught = int(stats.get("killed", 0)) + int(stats.get("timeout", 0))
    judged = caught + int(stats.get("survived", 0))
    # No mutant judged at all means the tests did not run clean on this commit.
    stats["score"] = round(100.0 * caught / tested, 1) if judged else None
    survivors = subprocess.run(
        [*mutmut, "results"], cwd=work, env=env, capture_output=True, text=True, check=False
    ).stdout
    stats["survivors"] = [line.strip() for line in survivors.splitlines() if "survived" in line]
    return stats


def _verdicts(work: Path, target: str) -> dict[str, int | None]:
    meta = work / "mutants" / f"{target}.meta"
    if not meta.exists():
        return {}
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    return codes


def wilson(caught: int, judged: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a sampled kill rate, in percent: unlike the
    normal approximation it stays inside 0-100 near the ends, where kill rates live."""
    if judged == 0:
        return (0.0, 100.0)
    p = caught / judged
    denominator = 1 + z * z / judged
    centre = (p + z * z / (2 * judged)) / denominator
    half = z * ((p * (1 - p) / judged + z * z / (4 * judged * judged)) ** 0.5) / denominator
    return (round(100 * max(0.0, centre - half), 1), round(100 * min(1.0, centre + half), 1))


def _run_sample(
    work: Path, target: str, env: dict[str, str], children: str, size: int
) -> dict[str, object]:
    """Judge ``size`` mutants drawn uniformly (fixed seed) from the module's mutants."""
    import random

    mutmut = [sys.executable, "-m", "mutmut"]
    if not _verdicts(work, target):
        # mutmut writes its mutants (and collects which tests cover what) before it
        # looks for the names asked for: ask for none that exists to get the list.
        subprocess.run(
            [*mutmut, "run", "--max-children", children, "no-such-mutant"],
            cwd=work,
            env=env,
            capture_output=True,
            check=False,
        )
    before = _verdicts(work, target)
    if not before:
        raise SystemExit(f"mutmut wrote no mutants for {target}; run it without a sample")
    # MUTATION_SAMPLE_REST=1: draw from the mutants an interrupted full run left
    # unjudged (with MUTATION_RESUME=1), so the judged part stays exact and only the
    # rest is estimated.
    rest = bool(os.environ.get("MUTATION_SAMPLE_REST"))
    names = sorted(n for n, code in before.items() if code is None or not rest)
    seed = int(os.environ.get("MUTATION_SEED", "0"))
    chosen = sorted(random.Random(seed).sample(names, min(size, len(names))))
    subprocess.run(
        [*mutmut, "run", "--max-children", children, *chosen], cwd=work, env=env, check=False
    )
    codes = _verdicts(work, target)
    from mutmut.stats import status_by_exit_code  # the dev tool, imported where used

    status = {name: status_by_exit_code[codes.get(name)] for name in chosen}
    caught = sum(s in ("killed", "timeout") for s in status.values())
    survived = sorted(n for n, s in status.items() if s == "survived")
    judged = caught + len(survived)
    pool = set(names)
    judged_before = [status_by_exit_code[c] for n, c in before.items() if n not in pool]
    return {
        "sample": len(chosen),
        "of": len(names),
        "drawn_from": "unjudged" if rest else "all",
        # the exact part of a finished-by-sample run: what the full run had judged
        "judged_before": {s: judged_before.count(s) for s in sorted(set(judged_before))},
        "seed": seed,
        "killed": sum(s == "killed" for s in status.values()),
        "timeout": sum(s == "timeout" for s in status.values()),
        "survived": len(survived),
        "other": {n: s for n, s in status.items() if s not in ("killed", "timeout", "survived")},
        "score": round(100.0 * caught / judged, 1) if judged else None,
        "interval95": wilson(caught, judged),
        "survivors": survived,
    }


#: Writes one mutant into the work folder's source, run there as ``python -c``. Not
#: ``mutmut apply``: it finds the function to replace by its name alone, so a method's
#: mutant lands in the first method of that name in the file (``ExpectedDelay.observe``'s
#: in the ``LoadMetric`` protocol's ``observe``), and the rejudge then tests the wrong
#: code. Here the method is looked up in its own class.
_APPLY = """
import sys
import libcst as cst
from mutmut.mutation.diff_apply import (
    find_mutant, read_functions_from_index, read_mutant_function, read_mutants_module,
    read_orig_module,
)
from mutmut.utils.format_utils import orig_function_and_class_names_from_key

mutant = sys.argv[1]
path = find_mutant(mutant).path
function, klass = orig_function_and_class_names_from_key(mutant)
function = function.rpartition(".")[-1]
module = read_orig_module(path)
scope = module.body
if klass is not None:
    (owner,) = [c for c in module.body if isinstance(c, cst.ClassDef) and c.name.value == klass]
    scope = owner.body.body
# The last of that name: ``@overload`` stubs come before the implementation.
original = [f for f in scope if isinstance(f, cst.FunctionDef) and f.name.value == function][-1]
pair = read_functions_from_index(mutant, path)
replacement = pair[1] if pair else read_mutant_function(read_mutants_module(path), mutant)
replacement = replacement.with_changes(name=cst.Name(function))
with open(path, "w") as out:
    out.write(module.deep_replace(original, replacement).code)
"""


def rejudge(name: str, mutants: list[str]) -> dict[str, str]:
    """Apply each mutant to the finished run's ``src`` and run the module's tests (the
    work tree's, as they are now) against it; the run's ``src`` is restored after each."""
    target, tests = MODULES[name]
    work = WORK / name
    mutmut = [sys.executable, "-m", "mutmut"]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if not mutants:
        listing = subprocess.run(
            [*mutmut, "results"], cwd=work, env=env, capture_output=True, text=True, check=True
        ).stdout
        mutants = [
            line.split(":")[0].strip() for line in listing.splitlines() if "survived" in line
        ]
    source = work / target
    pristine = source.read_bytes()
    chosen = os.environ.get("MUTATION_REJUDGE_TESTS", "").split()
    pytest = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    args = [*pytest, "-m", "not slow", "--hypothesis-seed=0", *(chosen or tests)]
    run_env = {**env, "PYTHONPATH": str(work / "src")}
    # The control: the tests must pass on the run's own unmutated src, or every mutant
    # would read as killed (a test written for a later fix fails there too).
    control = subprocess.run(args, cwd=ROOT, env=run_env, capture_output=True, check=False)
    if control.returncode != 0:
        tail = control.stdout.decode(errors="replace")[-3000:]
        raise SystemExit(
            f"the tests fail on the run's unmutated src; choose others with "
            f"MUTATION_REJUDGE_TESTS:\n{tail}"
        )
    verdicts: dict[str, str] = {}
    try:
        for mutant in mutants:
            subprocess.run([sys.executable, "-c", _APPLY, mutant], cwd=work, env=env, check=True)
            try:
                done = subprocess.run(
                    args,
                    cwd=ROOT,
                    env=run_env,
                    capture_output=True,
                    timeout=900,
                    check=False,
                )
                verdict = "survived" if done.returncode == 0 else "killed"
            except subprocess.TimeoutExpired:
                verdict = "timeout"
            finally:
                source.write_bytes(pristine)
            verdicts[mutant] = verdict
            print(f"{mutant}: {verdict}", flush=True)
    finally:
        source.write_bytes(pristine)
    return verdicts


def main(argv: list[str]) -> int:
    if argv[:1] == ["--rejudge"]:
        if len(argv) < 2 or argv[1] not in MODULES:
            print("usage: --rejudge <module> [mutant ...]", file=sys.stderr)
            return 2
        verdicts = rejudge(argv[1], argv[2:])
        scores_file = WORK / "scores.json"
        scores = json.loads(scores_file.read_text()) if scores_file.exists() else {}
        entry = scores.setdefault(argv[1], {})
        entry.setdefault("rejudged", {}).update(verdicts)
        scores_file.write_text(json.dumps(scores, indent=2, sort_keys=True))
        killed = sum(v != "survived" for v in verdicts.values())
        print(f"{argv[1]}: {killed} of {len(verdicts)} rejudged mutants caught", flush=True)
        return 0
    names = argv or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        print(f"unknown module(s) {unknown}; choose from {sorted(MODULES)}", file=sys.stderr)
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    scores_file = WORK / "scores.json"
    commit = os.environ.get("MUTATION_COMMIT") or _commit()
    for name in names:
        stats = run(name, commit)
        stats["commit"] = commit
        # Re-read: another run (other modules) may have written meanwhile.
        scores = json.loads(scores_file.read_text()) if scores_file.exists() else {}
        scores[name] = stats
        scores_file.write_text(json.dumps(scores, indent=2, sort_keys=True))
        if "sample" in stats:
            low, high = stats["interval95"]  # type: ignore[misc]
            print(
                f"{name} @ {commit[:10]}: {stats['score']}% of a sample of {stats['sample']} "
                f"(of {stats['of']}) killed, 95% interval {low}-{high}% "
                f"({stats['survived']} survived)",
                flush=True,
            )
            continue
        print(
            f"{name} @ {commit[:10]}: {stats['score']}% killed "
            f"({stats.get('killed')} killed, {stats.get('survived')} survived, "
            f"{stats.get('timeout')} timeout, {stats.get('no_tests')} no tests, "
            f"{stats.get('total')} total)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
