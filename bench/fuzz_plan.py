"""Fuzz the plan frame parser of upward delta pushes (`connreg.delta.plan`, pure Python) with
atheris, libFuzzer's engine for Python: run by bench/fuzz.sh, or alone as
`.venv/bin/python bench/fuzz_plan.py -max_total_time=60 [CORPUS_DIR]`.

Properties checked on every input, as a parent receives it from a child:
- `parse` either returns entries or raises `PlanError`; nothing else escapes it;
- what it accepts is canonical: `encode(parse(body)) == body`, within the entry/size bounds;
- each data entry is exactly one batch frame entry: `split_batch` agrees, and the Rust
  `decode_chunks` either verifies it (BLAKE3 matches) or raises `CorruptChunk`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from connreg import _core
    from connreg.delta import plan


def check(body: bytes) -> None:
    try:
        entries = plan.parse(body)
    except plan.PlanError:
        return
    assert 0 < len(entries) <= plan.MAX_ENTRIES
    assert plan.encode(entries) == body, "accepted plan is not canonical"
    for e in entries:
        assert 0 < getattr(e, "length", 1) <= plan.MAX_CHUNK
        if isinstance(e, plan.Data):
            (again,) = plan.split_batch(e.entry)
            assert again == e
            try:
                ((chunk_id, data),) = _core.decode_chunks(e.entry, plan.MAX_CHUNK)
            except _core.CorruptChunk:
                continue
            assert chunk_id == e.chunk_id and len(data) <= plan.MAX_CHUNK


def write_seeds(corpus: Path) -> None:
    """Start an empty corpus from one plan of each entry kind (a copy, a verified raw data
    entry, a ref), so the fuzzer mutates real structure from its first run."""
    chunk = b"seed chunk bytes " * 8
    chunk_id = _core.digest_bytes(chunk, "blake3").split(":", 1)[1]
    raw_entry = bytes.fromhex(chunk_id) + b"\x00" + len(chunk).to_bytes(4, "little") + chunk
    seeds = {
        "copy": [plan.Copy(chunk_id, len(chunk))],
        "data": [plan.Data(chunk_id, raw_entry)],
        "ref": [plan.Ref(chunk_id, -5, 7, chunk_id)],
        "mixed": [plan.Copy(chunk_id, 1), plan.Data(chunk_id, raw_entry),
                  plan.Ref(chunk_id, 3, 9, chunk_id)],
    }
    for name, entries in seeds.items():
        (corpus / f"seed-{name}").write_bytes(plan.encode(entries))


def main() -> None:
    dirs = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    if dirs and dirs[0].is_dir() and not any(dirs[0].iterdir()):
        write_seeds(dirs[0])
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
