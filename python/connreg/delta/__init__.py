"""Chunk-level delta transfer between connreg nodes (spec §5 "Transfer").

- `index.py`     the chunk index: every stored blob cut into content-defined chunks (FastCDC,
                 BLAKE3 ids, in the Rust core), built at ingest and rebuildable.
- `endpoints.py` parent side: a blob's chunk list, and batches of chunks, zstd-compressed.
- `fetch.py`     child side: build a blob from chunks it already holds plus the ones it lacks,
                 resumable, verified by SHA-256 before it becomes visible.
- `plan.py`      the frame of an upward push: "copy chunk X", "bytes of your old version near
                 chunk X" (ref) and literal entries.
- `receive.py`   parent side, upward: which chunks it holds, where its old version holds a
                 run's sub-chunks (refinement), appending a plan to an upload.
- `push.py`      child side, upward: push a blob by the chunks the parent lacks, resumable.
- `bandwidth.py` a token bucket that caps sync traffic in both directions.
"""
