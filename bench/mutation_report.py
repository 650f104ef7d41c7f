"""Write bench/results/mutation.md from the last mutmut run (called by bench/mutation.sh; standard library only).

    python3 bench/mutation_report.py PATTERN...                   # the report, for the mutants matching PATTERNs
    python3 bench/mutation_report.py --list-survivors PATTERN...  # names of the unexplained survivors, one a line

The kill rate counts a mutant as caught when its tests failed, crashed or timed out, over all mutants in scope
except the equivalent ones: those listed with their reason in bench/mutation_equivalent.txt. A listed mutant
that a test kills after all is reported as killed (and its line can go).
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import fnmatch
import os
import re
import subprocess
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "bench" / "mutation_equivalent.txt"
REPORT = ROOT / "bench" / "results" / "mutation.md"
ELAPSED = ROOT / "mutants" / "elapsed_seconds"
CAUGHT = {"killed", "timeout", "segfault"}


def read_results(mutmut: str) -> dict[str, str]:
    """mutant name -> status, from `mutmut results --all` ("    <name>: <status>" lines)."""
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return dict(m.groups() for m in re.finditer(r"^\s+(\S+__mutmut_\d+): (.+?)\s*$", out, re.M))


def read_equivalent() -> dict[str, str]:
    """mutant name -> why it cannot change behaviour."""
    reasons = {}
    for line in EQUIVALENT.read_text().splitlines() if EQUIVALENT.is_file() else []:
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.strip().partition(" ")
            reasons[name] = reason.strip()
    return reasons


def function_source(path: Path, name: str) -> list[str]:
    """The lines of `def <name>(` in mutmut's mutated copy of a module, up to the next definition at its indentation."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(f"def {name}("))
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) <= indent),
        len(lines),
    )
    return lines[start + 1 : end]


def change(name: str) -> str:
    """The mutant's changed lines against the original function (what `mutmut show` prints), as one short string."""
    module, _, function = name.partition(".x")
    path = ROOT / "mutants" / Path(*module.split(".")).with_suffix(".py")
    original = function_source(path, "x" + function.partition("__mutmut_")[0] + "__mutmut_orig")
    mutated = function_source(path, "x" + function)
    diff = difflib.unified_diff(original, mutated, lineterm="", n=0)
    lines = [line for line in diff if line[:1] in "+-" and line[1:].strip() and not line.startswith(("+++", "---"))]
    return " / ".join(" ".join(line.split()) for line in lines) or "(no difference found)"


def module_of(name: str) -> str:
    return re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]


def in_scope(results: dict[str, str], patterns: list[str]) -> dict[str, str]:
    return {n: s for n, s in results.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}


def survivors(results: dict[str, str], equivalent: dict[str, str]) -> list[str]:
    return sorted(n for n, s in results.items() if s not in CAUGHT | {"not checked"} and n not in equivalent)


def md_code(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def report(results: dict[str, str], equivalent: dict[str, str], mutmut: str, args) -> str:
    stale = sorted(n for n in equivalent if n not in results or results[n] in CAUGHT)
    equivalent = {n: r for n, r in equivalent.items() if n not in stale}
    open_ = survivors(results, equivalent)
    rows, totals = [], Counter()
    for module in sorted({module_of(n) for n in results}):
        names = [n for n in results if module_of(n) == module]
        c = Counter("equivalent" if n in equivalent else results[n] for n in names)
        caught = sum(c[s] for s in CAUGHT)
        relevant = len(names) - c["equivalent"] - c["not checked"]
        totals.update(c)
        rate = f"{100 * caught / relevant:.1f}%" if relevant else "-"
        others = len(names) - caught - c["survived"] - c["equivalent"] - c["not checked"]
        rows.append(f"| {module} | {len(names)} | {caught} | {c['survived']} | {c['equivalent']} | {others} | {rate} |")
    caught = sum(totals[s] for s in CAUGHT)
    relevant = sum(totals.values()) - totals["equivalent"] - totals["not checked"]
    others = sum(totals.values()) - caught - totals["survived"] - totals["equivalent"] - totals["not checked"]
    rate = 100 * caught / relevant if relevant else 0.0

    elapsed = args.seconds or (ELAPSED.read_text().strip() if ELAPSED.is_file() else "")
    version = subprocess.run([mutmut, "--version"], capture_output=True, text=True).stdout.strip().replace(", version", "")
    lines = [
        "# Mutation testing",
        "",
        f"Written by `bench/mutation.sh` on {datetime.date.today()} ({version}, {os.cpu_count()} CPU cores, "
        f"{args.jobs} mutants at a time{f', {int(elapsed) // 60} min {int(elapsed) % 60} s' if elapsed else ''}). "
        "Scope: the mutant-name patterns in `bench/mutation.sh`; tests: `[tool.mutmut]` in `pyproject.toml`.",
        "",
        f"**Kill rate: {rate:.1f}%** of the {relevant} non-equivalent mutants ({caught} caught: "
        f"{totals['killed']} by a failing test, {totals['timeout']} by a timeout, {totals['segfault']} by a crash; "
        f"{len(open_)} not caught). "
        f"{totals['equivalent']} survivors are equivalent mutants, explained below."
        + (f" {totals['not checked']} mutants were not checked (the run was cut short)." if totals["not checked"] else ""),
        "",
        "| module | mutants | caught | survived | equivalent | no tests / other | kill rate |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        f"| **all** | {sum(totals.values())} | {caught} | {totals['survived']} | {totals['equivalent']} | {others} | "
        f"**{rate:.1f}%** |",
        "",
        "## Survivors without a test or an explanation",
        "",
    ]
    if open_:
        lines += ["| mutant | status | change |", "| --- | --- | --- |"]
        lines += [f"| {n} | {results[n]} | {md_code(change(n))} |" for n in open_]
    else:
        lines.append("None.")
    lines += [
        "",
        "## Equivalent mutants",
        "",
        "Survivors that cannot change what the code does (reasons from `bench/mutation_equivalent.txt`).",
        "",
    ]
    if equivalent:
        lines += ["| mutant | change | why it is equivalent |", "| --- | --- | --- |"]
        lines += [f"| {n} | {md_code(change(n))} | {equivalent[n]} |" for n in sorted(equivalent)]
    else:
        lines.append("None.")
    if stale:
        lines += ["", "## Stale lines in `bench/mutation_equivalent.txt`", "", "Killed now, or no longer a mutant in scope:", ""]
        lines += [f"- {n}: {'killed' if n in results else 'not found'}" for n in stale]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("patterns", nargs="+", help="mutant-name patterns in scope (as given to `mutmut run`)")
    parser.add_argument("--mutmut", default="mutmut", help="the mutmut executable")
    parser.add_argument("--seconds", default="", help="how long the run took")
    parser.add_argument("--jobs", default="2", help="mutants run at a time")
    parser.add_argument("--list-survivors", action="store_true", help="print the unexplained survivors and stop")
    args = parser.parse_args()

    results = in_scope(read_results(args.mutmut), args.patterns)
    if not results:
        raise SystemExit("no mutants in scope: run bench/mutation.sh first")
    equivalent = read_equivalent()
    if args.list_survivors:
        print("\n".join(survivors(results, equivalent)))
        return
    if args.seconds:
        ELAPSED.write_text(args.seconds)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(report(results, equivalent, args.mutmut, args))
    print(REPORT.read_text().split("\n## ")[0])


if __name__ == "__main__":
    main()
