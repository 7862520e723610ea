"""The plan frame of an upward delta push: how a child tells its parent to extend an upload.

A body is a sequence of entries, applied in order at the end of the upload session:

    copy  := 0x43 ('C') | id (32 bytes, BLAKE3) | length (u32 LE)
             "append the chunk <id> of <length> bytes from one of your own blobs"
    data  := 0x44 ('D') | id (32 bytes, BLAKE3) | codec (1 byte: 0 raw, 1 zstd)
                        | payload length (u32 LE) | payload
             "append these bytes"; everything after the kind byte is exactly one entry of
             the Rust chunk batch frame (`encode_chunks`/`decode_chunks`), so the receiver
             checks BLAKE3(bytes) == id with the same code as downward batches.
    ref   := 0x52 ('R') | anchor (32 bytes, BLAKE3 of a chunk) | delta (i64 LE)
                        | length (u32 LE) | id (32 bytes, BLAKE3 of the range)
             "append <length> bytes of the blob that holds chunk <anchor>, from the anchor's
             offset + <delta>; they hash to <id>": bytes of the parent's old version found by
             refinement (`chunks/near`), which need not start on a chunk boundary there.

A data entry's id is the BLAKE3 of exactly the bytes it carries: usually a whole chunk, or the
rest of one when a resumed upload ends inside a chunk. Bounds: at most MAX_ENTRIES entries and
MAX_BODY bytes per request, chunks of at most MAX_CHUNK bytes, at most MAX_LITERAL literal
bytes once decompressed (ref bytes count too: the receiver reads them to verify them).
Parsing here checks structure only; BLAKE3 is verified by `decode_chunks` (data) and the
receiver (refs), copies by the receiver's chunk index.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

COPY = 0x43
DATA = 0x44
REF = 0x52
ID_BYTES = 32
CODECS = (0, 1)
MAX_ENTRIES = 4096
MAX_BODY = 16 * 1024 * 1024
MAX_CHUNK = 16 * 1024 * 1024
MAX_LITERAL = 64 * 1024 * 1024  # decompressed literal bytes per request
CONTENT_TYPE = "application/vnd.connreg.chunk-plan.v1"

_U32 = struct.Struct("<I")
_REF = struct.Struct("<qI")  # delta, length (between the anchor and the id)
_REF_BYTES = ID_BYTES + _REF.size + ID_BYTES
_DATA_HEADER = ID_BYTES + 1 + _U32.size  # id | codec | payload length


class PlanError(ValueError):
    """The body is not a well-formed plan frame (the message says where)."""


@dataclass(frozen=True)
class Copy:
    chunk_id: str  # BLAKE3 hex
    length: int


@dataclass(frozen=True)
class Data:
    chunk_id: str
    entry: bytes  # one `encode_chunks` entry: id | codec | length | payload


@dataclass(frozen=True)
class Ref:
    anchor: str  # BLAKE3 hex of a chunk the receiver holds
    delta: int  # offset of the range minus the anchor's offset, in the anchor's blob
    length: int
    chunk_id: str  # BLAKE3 hex of the range


def split_batch(frame: bytes) -> list[Data]:
    """The entries of an `encode_chunks` frame, one Data each (child side)."""
    out, pos = [], 0
    while pos < len(frame):
        if len(frame) - pos < _DATA_HEADER:
            raise PlanError(f"batch entry {len(out)}: truncated header")
        (length,) = _U32.unpack_from(frame, pos + ID_BYTES + 1)
        end = pos + _DATA_HEADER + length
        if end > len(frame):
            raise PlanError(f"batch entry {len(out)}: payload past the end")
        out.append(Data(frame[pos:pos + ID_BYTES].hex(), frame[pos:end]))
        pos = end
    return out


def encode(entries: list[Copy | Data | Ref]) -> bytes:
    parts = []
    for e in entries:
        if isinstance(e, Copy):
            parts += [bytes([COPY]), bytes.fromhex(e.chunk_id), _U32.pack(e.length)]
        elif isinstance(e, Ref):
            parts += [bytes([REF]), bytes.fromhex(e.anchor), _REF.pack(e.delta, e.length),
                      bytes.fromhex(e.chunk_id)]
        else:
            parts += [bytes([DATA]), e.entry]
    return b"".join(parts)


def parse(body: bytes) -> list[Copy | Data | Ref]:
    """Entries of a plan frame, structure checked (receiver side)."""
    if not body:
        raise PlanError("empty plan")
    if len(body) > MAX_BODY:
        raise PlanError(f"a plan holds at most {MAX_BODY} bytes")
    out: list[Copy | Data | Ref] = []
    pos = 0
    while pos < len(body):
        n = len(out)
        if n >= MAX_ENTRIES:
            raise PlanError(f"a plan holds at most {MAX_ENTRIES} entries")
        kind, pos = body[pos], pos + 1
        if kind == COPY:
            if len(body) - pos < ID_BYTES + _U32.size:
                raise PlanError(f"entry {n}: truncated copy entry")
            (length,) = _U32.unpack_from(body, pos + ID_BYTES)
            if not 0 < length <= MAX_CHUNK:
                raise PlanError(f"entry {n}: chunk length {length} out of range")
            out.append(Copy(body[pos:pos + ID_BYTES].hex(), length))
            pos += ID_BYTES + _U32.size
        elif kind == DATA:
            if len(body) - pos < _DATA_HEADER:
                raise PlanError(f"entry {n}: truncated data entry")
            codec = body[pos + ID_BYTES]
            (length,) = _U32.unpack_from(body, pos + ID_BYTES + 1)
            if codec not in CODECS:
                raise PlanError(f"entry {n}: unknown codec {codec}")
            if not 0 < length <= MAX_CHUNK:
                raise PlanError(f"entry {n}: payload length {length} out of range")
            end = pos + _DATA_HEADER + length
            if end > len(body):
                raise PlanError(f"entry {n}: payload past the end")
            out.append(Data(body[pos:pos + ID_BYTES].hex(), body[pos:end]))
            pos = end
        elif kind == REF:
            if len(body) - pos < _REF_BYTES:
                raise PlanError(f"entry {n}: truncated ref entry")
            delta, length = _REF.unpack_from(body, pos + ID_BYTES)
            if not 0 < length <= MAX_CHUNK:
                raise PlanError(f"entry {n}: range length {length} out of range")
            end = pos + _REF_BYTES
            out.append(Ref(body[pos:pos + ID_BYTES].hex(), delta, length,
                           body[end - ID_BYTES:end].hex()))
            pos = end
        else:
            raise PlanError(f"entry {n}: unknown kind 0x{kind:02x}")
    return out
