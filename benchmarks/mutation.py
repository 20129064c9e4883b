"""Mutation testing of the method's core formulas with mutmut (not part of CI).

    python benchmarks/mutation.py --label after                                    # the formula tests
    python benchmarks/mutation.py --label before --tests tests/test_safeguard.py   # without tests/test_formulas.py

Copies src/ and tests/ of this checkout to a temporary folder, writes mutmut's configuration
there (the modules of ``--modules``, default the core: heads.py and safeguard.py; the
statements that only word the safeguard's message are left alone), runs
``mutmut run`` with the tests of ``--tests`` selected by ``--keyword`` (pytest's ``-k``; by
default the tests that run no model: an end-to-end run of the tiny model takes seconds, and
every surviving mutant would run all of them; mutmut runs, for each mutant, only the tests
that reach the mutated function) and writes the counts, the score (killed / all mutants: a mutant no selected test reaches
counts as surviving; ``score_timeouts_caught`` also counts the timeouts, which a loaded
machine makes more of) and the names of the surviving mutants to results/mutation_<label>.json. Needs
``pip install mutmut`` (3.x). Runs on a clean clone; nothing is written to the checkout but
the result file.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
CORE = ("src/reclip/method/heads.py", "src/reclip/method/safeguard.py")
QUICK_TESTS = ("tests/test_formulas.py", "tests/test_safeguard.py")
QUICK = "not slow and not distributed and not real_data"
# test_safeguard.py's end-to-end runs of the tiny model
RUNS = "not (good_pseudo or calibration_target or no_calibration or random_pseudo or judge_that)"
# statements that only word a message (the safeguard's reason) or name metrics.json keys: not formulas
MESSAGES = (r"signals = \(", r"why = \(", r'return \{"kept"', r"f\"\{signals\}")


def write_config(work: Path, modules: list[str], tests: list[str], keyword: str) -> None:
    lines = ["[mutmut]", "source_paths = src", "only_mutate =", *[f"    {m}" for m in modules],
             "do_not_mutate_patterns =", *[f"    {p}" for p in MESSAGES],
             "process_isolation = forkserver",  # torch is not fork-safe once its thread pools run
             "pytest_add_cli_args_test_selection =", *[f"    {t}" for t in tests],
             "pytest_add_cli_args =", "    -m", f"    {QUICK}", "    -k", f"    {keyword}", "    -p",
             "    no:cacheprovider", "    -q"]
    (work / "setup.cfg").write_text("\n".join(lines) + "\n")


def mutant_statuses(work: Path) -> dict[str, str]:
    """mutant name -> mutmut's status (killed, survived, timeout, no tests, ...)."""
    from mutmut.stats import status_by_exit_code

    statuses = {}
    for meta in (work / "mutants").rglob("*.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            statuses[name] = status_by_exit_code[code]
    return statuses


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", required=True, help="name of the result file: results/mutation_<label>.json")
    p.add_argument("--modules", nargs="+", default=list(CORE), help="files to mutate, relative to the checkout")
    p.add_argument("--tests", nargs="+", default=list(QUICK_TESTS), help="test files that may kill a mutant")
    p.add_argument("--keyword", default=RUNS, help="pytest -k expression selecting among the tests")
    p.add_argument("--max-children", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="reclip-mutation-") as tmp:
        work = Path(tmp)
        for part in ("src", "tests"):
            shutil.copytree(ROOT / part, work / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
        write_config(work, args.modules, args.tests, args.keyword)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut puts mutants/src first
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # one thread per mutant worker
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)],
                             cwd=work, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        statuses = mutant_statuses(work)
        if not statuses:
            sys.exit(f"mutmut produced no results (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    counts = Counter(statuses.values())
    killed, survived = counts.get("killed", 0), counts.get("survived", 0) + counts.get("no tests", 0)
    total = sum(counts.values())
    record = {"label": args.label, "modules": args.modules, "tests": args.tests, "keyword": args.keyword,
              "counts": dict(counts), "score": round(killed / max(total, 1), 4),
              "score_timeouts_caught": round((killed + counts.get("timeout", 0)) / max(total, 1), 4),
              "survived": sorted(n for n, s in statuses.items() if s in ("survived", "no tests")),
              "seconds": round(seconds, 1), "cpu": cpu_model(), "load": os.getloadavg()}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"mutation_{args.label}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{args.label}: score {record['score']:.3f} ({killed} killed of {total}, {survived} survived, "
          f"{dict(counts)}) in {seconds:.0f} s -> {out}")


if __name__ == "__main__":
    main()
