"""Documents and hostile updates shared by the document tests."""

from __future__ import annotations

import random

from pycrdt import Doc, Map, Text

from crdtcoord import CodecError
from crdtcoord.documents import parse_update


def sample_doc(seed: int = 1, n: int = 40) -> Doc:
    """A pycrdt doc with text (non-ASCII too), nested maps and deletes."""
    rng = random.Random(seed)
    doc: Doc = Doc(client_id=1000 + seed)
    t = doc.get("t", type=Text)
    m = doc.get("m", type=Map)
    for i in range(n):
        r = rng.random()
        if r < 0.5:
            t.insert(0, rng.choice(["a", "é", "☕", "日本", "xyz"]))
        elif r < 0.6 and len(str(t)) > 2:
            del t[0:1]
        elif r < 0.9:
            m[f"k{rng.randrange(8)}"] = rng.choice([i, "v", None, True, [1, "x"], {"n": i}])
        else:
            m[f"nested{i}"] = Map({"inner": i})
    return doc


def half_applying_updates(want: int = 1, tries: int = 20000) -> list[bytes]:
    """Decodable v1 updates (they pass the strict reader) that pycrdt half-applies: it raises
    after changing the doc (reference/pycrdt.md §1.9). Found by mutating a valid update."""
    base = sample_doc(3, 60).get_update()
    rng = random.Random(7)
    out: list[bytes] = []
    for _ in range(tries):
        u = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            u[rng.randrange(len(u))] = rng.randrange(256)
        try:
            parse_update(bytes(u))
        except CodecError:
            continue
        probe: Doc = Doc()
        try:
            probe.apply_update(bytes(u))
            continue
        except Exception:
            pass
        if probe.get_state() != b"\x00":
            out.append(bytes(u))
            if len(out) >= want:
                break
    return out


def half_applying_update() -> bytes:
    found = half_applying_updates(1)
    assert found, "no half-applying update found"
    return found[0]
