"""Fuzz the parsers that read bytes from other nodes and clients, each for a bounded time.

Not a test and not part of the test command: run it by hand, from the repo root.

    .venv/bin/python bench/fuzz.py [--seconds 60] [--targets chunk_frame,plan] [--results PATH]

Targets (see bench/README.md, "Fuzzing"):
- Rust, cargo-fuzz/libFuzzer with AddressSanitizer (rust/fuzz/fuzz_targets/): `chunk_frame`
  (chunk batch frames, `decode_chunks`), `zstd_capped` (zstd decompression with a size cap),
  `digest_parse` (digests and upload ids), `chunk_list` (FastCDC chunk lists);
- Python, atheris (bench/fuzz_plan.py): `plan` (plan frames of upward delta pushes).

cargo-fuzz is installed from crates.io when missing, atheris from PyPI into the venv.
cargo-fuzz passes nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take
them. Targets run one after the other, one process each (the machine is shared). Each keeps
its corpus in rust/fuzz/corpus/<target>, so later runs start where earlier ones stopped; a
crash leaves its input in rust/fuzz/artifacts/<target>/ (rerun it with
`RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir rust/fuzz -O <target> <file>`).

Prints one summary line per target, (re)writes the "## Fuzzing" section of bench/RESULTS.md,
and exits 1 if any target crashed or could not run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ_DIR = ROOT / "rust" / "fuzz"
LOGS = ROOT / "bench" / ".cache" / "fuzz"
RUST_TARGETS = ["chunk_frame", "zstd_capped", "digest_parse", "chunk_list"]
PY_TARGETS = {"plan": ROOT / "bench" / "fuzz_plan.py"}
SECTION = "## Fuzzing"
# RUSTC_BOOTSTRAP: cargo-fuzz's -Zsanitizer / -Cpasses flags on a stable toolchain.
CARGO_ENV = {**os.environ, "RUSTC_BOOTSTRAP": "1"}


@dataclass
class Outcome:
    target: str
    engine: str
    runs: int | None = None
    seconds: int | None = None
    cov: int | None = None
    features: int | None = None
    corpus_start: int | None = None
    corpus: int | None = None
    new_units: int | None = None
    exit_code: int = 0
    crash: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.crash


def log(msg: str) -> None:
    print(msg, flush=True)


def ensure_tools(targets: list[str], python: str) -> None:
    if any(t in RUST_TARGETS for t in targets):
        if subprocess.run(["cargo", "fuzz", "--version"], capture_output=True).returncode != 0:
            log("installing cargo-fuzz from crates.io (a few minutes)...")
            subprocess.run(["cargo", "install", "cargo-fuzz", "--locked"], check=True)
        log("building the Rust fuzz targets (the first build takes a few minutes)...")
        LOGS.mkdir(parents=True, exist_ok=True)
        with open(LOGS / "build.log", "wb") as out:
            built = subprocess.run(["cargo", "fuzz", "build", "--fuzz-dir", str(FUZZ_DIR), "-O"],
                                   cwd=ROOT, env=CARGO_ENV, stdout=out, stderr=subprocess.STDOUT)
        if built.returncode != 0:
            sys.exit(f"cargo fuzz build failed; see {LOGS / 'build.log'}")
    if any(t in PY_TARGETS for t in targets):
        if subprocess.run([python, "-c", "import atheris"], capture_output=True).returncode:
            log("installing atheris from PyPI...")
            subprocess.run([python, "-m", "pip", "install", "-q", "atheris"], check=True)


def run_target(target: str, seconds: int, python: str) -> Outcome:
    corpus = FUZZ_DIR / "corpus" / target
    artifacts = FUZZ_DIR / "artifacts" / target
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    before = set(artifacts.iterdir())
    # bounded time, one process, crash inputs under artifacts/, libFuzzer's closing stats
    flags = [f"-max_total_time={seconds}", f"-artifact_prefix={artifacts}/",
             "-print_final_stats=1"]
    if target in PY_TARGETS:
        cmd, env, engine = [python, str(PY_TARGETS[target]), *flags, str(corpus)], None, "atheris"
    else:
        cmd = ["cargo", "fuzz", "run", "--fuzz-dir", str(FUZZ_DIR), "-O", target, str(corpus),
               "--", *flags]
        env, engine = CARGO_ENV, "cargo-fuzz"
    log_path = LOGS / f"{target}.log"
    log(f"fuzzing {target} for {seconds}s (log: {log_path.relative_to(ROOT)})")
    with open(log_path, "wb") as out:
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out,
                              stderr=subprocess.STDOUT).returncode
    outcome = parse_log(target, engine, log_path.read_text(errors="replace"))
    outcome.exit_code = code
    new = sorted(set(artifacts.iterdir()) - before)
    if new:
        outcome.crash = ", ".join(str(p.relative_to(ROOT)) for p in new)
    elif code != 0:
        outcome.crash = f"exit {code}, no artifact (see {log_path.relative_to(ROOT)})"
    return outcome


def _int(pattern: str, text: str) -> int | None:
    found = re.findall(pattern, text, re.M)
    return int(found[-1]) if found else None


def parse_log(target: str, engine: str, text: str) -> Outcome:
    """libFuzzer's own lines: the last `#N DONE cov: … ft: … corp: N/…`, `Done N runs in S
    second(s)` and the `stat::` block of -print_final_stats."""
    done = [ln for ln in text.splitlines() if re.match(r"#\d+\s+(DONE|INITED|NEW|REDUCE|pulse)",
                                                      ln)]
    last = done[-1] if done else ""
    return Outcome(
        target=target, engine=engine,
        runs=_int(r"^stat::number_of_executed_units:\s+(\d+)", text),
        seconds=_int(r"^Done \d+ runs in (\d+) second", text),
        cov=_int(r"cov: (\d+)", last), features=_int(r"ft: (\d+)", last),
        corpus_start=_int(r"^#\d+\s+INITED.*corp: (\d+)", text),
        corpus=_int(r"corp: (\d+)", last),
        new_units=_int(r"^stat::new_units_added:\s+(\d+)", text))


def _show(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def section(outcomes: list[Outcome], seconds: int, argv: list[str], took: float) -> str:
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "rust", "bench",
                                "python/connreg/delta"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
    except OSError:
        rev, dirty = "?", ""
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        SECTION, "",
        f"Run {when} (local), took {took / 60:.1f} min; connreg at git {rev}"
        f"{' + uncommitted changes' if dirty else ''}; {os.cpu_count()} vCPUs (shared, noisy), "
        f"Linux {platform.release()}; {rustc} with RUSTC_BOOTSTRAP=1, Python "
        f"{platform.python_version()}.",
        "",
        "Command (from the repo root):",
        "",
        "```",
        " ".join([".venv/bin/python", "bench/fuzz.py", *argv]),
        "```",
        "",
        f"{seconds} s per target, one process each, one after the other. `runs`: inputs "
        "executed; `cov`: coverage points reached (edges of instrumented code: the crate and "
        "Rust dependencies for cargo-fuzz, the Python module for atheris; the zstd C library "
        "is not instrumented); `features`: libFuzzer's finer coverage features; `corpus`: "
        "inputs kept at the start → at the end (corpora carry over between runs, in "
        "`rust/fuzz/corpus/`).",
        "",
        "| target | engine | what it parses | runs | s | cov | features | corpus | result |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    what = {
        "chunk_frame": "chunk batch frames (`decode_frame`, `decode_chunks`)",
        "zstd_capped": "zstd with a size cap (`decompress`, `zstd_decompress`)",
        "digest_parse": "digests, upload ids (`Digest::parse`, `validate_upload_id`)",
        "chunk_list": "chunk lists (`chunk_bytes`, `chunk_reader`, `ChunkParams`)",
        "plan": "delta plan frames (`connreg.delta.plan.parse`)",
    }
    for o in outcomes:
        result = "no crash" if o.ok else f"**crash**: {o.crash}"
        lines.append(f"| `{o.target}` | {o.engine} | {what.get(o.target, '')} | {_show(o.runs)} "
                     f"| {_show(o.seconds)} | {_show(o.cov)} | {_show(o.features)} "
                     f"| {_show(o.corpus_start)} → {_show(o.corpus)} | {result} |")
    crashed = [o for o in outcomes if not o.ok]
    lines += ["", "Found: " + ("nothing: no crash, hang, sanitizer report or failed property."
                               if not crashed else
                               f"{len(crashed)} target(s) failed; see the result column.")]
    return "\n".join(lines) + "\n"


def write_results(path: Path, text: str) -> None:
    """Replace the Fuzzing section (up to the next `## `), or append it."""
    old = path.read_text() if path.exists() else "# connreg benchmark results\n"
    start = old.find("\n" + SECTION)
    if start >= 0:
        nxt = old.find("\n## ", start + 1)
        old = old[:start] + ("\n" + old[nxt + 1:] if nxt >= 0 else "")
    path.write_text(old.rstrip("\n") + "\n\n" + text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60, help="time per target (default 60)")
    ap.add_argument("--targets", default=",".join(RUST_TARGETS + list(PY_TARGETS)),
                    help="comma-separated subset (default: all)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"),
                    help="file whose 'Fuzzing' section is (re)written; '' = stdout only")
    args = ap.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in RUST_TARGETS and t not in PY_TARGETS]
    if unknown or args.seconds < 1:
        ap.error(f"unknown targets {unknown}" if unknown else "--seconds must be >= 1")
    if shutil.which("cargo") is None and any(t in RUST_TARGETS for t in targets):
        sys.exit("cargo not found: the Rust targets need a Rust toolchain")
    python = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() \
        else sys.executable
    LOGS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ensure_tools(targets, python)
    outcomes = [run_target(t, args.seconds, python) for t in targets]

    log(f"\nfuzz summary ({args.seconds}s per target):")
    for o in outcomes:
        log(f"  {o.target:13} {_show(o.runs):>11} runs {_show(o.seconds):>4}s  "
            f"cov {_show(o.cov):>5}  features {_show(o.features):>6}  "
            f"corpus {_show(o.corpus):>5}  {'ok' if o.ok else 'CRASH: ' + o.crash}")
    if args.results:
        write_results(Path(args.results), section(outcomes, args.seconds, sys.argv[1:],
                                                  time.monotonic() - started))
        log(f"wrote the 'Fuzzing' section of {args.results}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
