"""One Raft member process for the three-process tests: ``raft_member.py INDEX ADDR,ADDR,ADDR
DATA_DIR OPS``. It starts its member, waits for a leader, runs two recording clients, prints
the history as JSON lines, and waits for a line on stdin before it stops (so no member leaves
while the others still need a majority)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from crdtcoord.consensus import RaftConsensus
from crdtcoord.testing.linearizability import History
from tests.consensus.clients import client


async def main() -> None:
    index, addrs_s, data_dir, ops = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    addrs = addrs_s.split(",")
    me = addrs[int(index)]
    raft = RaftConsensus(me, [a for a in addrs if a != me], data_dir=data_dir, timeout=10.0)
    await raft.start()
    print(json.dumps({"ready": True}), flush=True)
    # start together: wait for the go line
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    h = History()
    leases = ["L1", "L2"]
    await asyncio.gather(
        *(client(f"m{index}c{i}", raft, h, leases, ops, seed=int(index) * 10 + i) for i in range(2))
    )
    for op in h.ops:
        print(json.dumps([op.client, op.kind, list(op.args), op.call, op.ret, op.result]))
    print(json.dumps({"done": True}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await raft.close()


asyncio.run(main())
