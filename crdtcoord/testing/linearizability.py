"""A Wing-Gong linearizability checker (with Lowe's memoization) and a lease model.

Record a history of concurrent operations — each with the time it was invoked, the time its
answer came back (``None`` if it never did: a timeout, a crash) and the answer — then ask
whether some total order of the operations, consistent with real time (an operation that ended
before another began comes first) and with the model's sequential specification, explains every
answer. An operation without an answer may take effect at any point after its invocation, or
never.

:class:`LeaseModel` specifies a lease with fencing tokens: ``acquire`` succeeds only when the
lease is free (then with a token larger than every earlier one) or already held by the same
holder (a renewal: the same token); a refused acquire names the current holder; ``release`` and
``renew`` succeed only for the current holder with its current token; ``read`` returns the current
holder and token. Time-based expiry is not modelled: record histories with TTLs longer than the
test, or with explicit releases. Histories are checked per lease name (P-compositionality).

Example::

    h = History()
    op = h.invoke("c1", "acquire", ("L", "alice"))
    h.complete(op, ("ok", 1))
    assert check(h.ops, LeaseModel()).ok
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CheckResult", "History", "LeaseModel", "Operation", "check", "check_leases"]


@dataclass
class Operation:
    """One call: ``kind`` and ``args`` as the model understands them; ``result`` None until
    (unless) it completes."""

    client: str
    kind: str
    args: tuple[Any, ...]
    call: float
    ret: float | None = None
    result: Any = None
    id: int = 0

    @property
    def pending(self) -> bool:
        return self.ret is None


@dataclass
class History:
    """Thread-safe enough for asyncio (one loop): invoke, then complete."""

    ops: list[Operation] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def invoke(self, client: str, kind: str, args: tuple[Any, ...]) -> Operation:
        op = Operation(client, kind, args, time.monotonic(), id=next(self._ids))
        self.ops.append(op)
        return op

    def complete(self, op: Operation, result: Any) -> None:
        op.result = result
        op.ret = time.monotonic()


@dataclass
class CheckResult:
    ok: bool
    explored: int
    #: a longest prefix of operations that could be linearized (for a failure: where it stuck)
    witness: list[Operation] = field(default_factory=list)


class LeaseModel:
    """Sequential specification of a lease: state ``(holder, token, highest token)``."""

    def init(self) -> Hashable:
        return (None, 0, 0)

    def step(self, state: Any, op: Operation) -> list[Any]:
        """Next states if ``op`` (with its result, or any result when pending) can apply."""
        holder, token, top = state
        kind, args, res = op.kind, op.args, op.result
        pending = op.pending
        if kind == "acquire":
            who = args[1]
            out = []
            if holder is None or holder == who:  # free, or a renewal by the holder
                renewal = holder == who
                if pending:
                    out.append((who, token, top) if renewal else (who, top + 1, top + 1))
                elif res[0] == "ok":
                    t = res[1]
                    if renewal and t == token:
                        out.append(state)
                    elif not renewal and t > top:
                        out.append((who, t, t))
            elif pending or (res[0] == "held" and res[1] == holder):
                out.append(state)  # refused: held by someone else
            return out
        if kind in ("release", "renew"):
            who, t = args[1], args[2]
            mine = holder == who and token == t
            if pending:
                return [(None, token, top) if mine and kind == "release" else state]
            if res is True:
                return [(None, token, top) if kind == "release" else state] if mine else []
            return [state] if not mine else []
        if kind == "read":
            if pending:
                return [state]
            got_holder, got_token = res
            if holder is None:  # free: back-ends may or may not report the last token
                return [state] if got_holder is None and got_token in (0, top) else []
            return [state] if (got_holder, got_token) == (holder, token) else []
        raise ValueError(f"unknown operation {kind!r}")


def check(ops: Sequence[Operation], model: Any, *, limit: int = 2_000_000) -> CheckResult:
    """Is this history linearizable under ``model``? (One object: split by key first.)"""
    n = len(ops)
    order = sorted(range(n), key=lambda i: ops[i].call)
    calls: list[float] = [ops[i].call for i in order]
    rets: list[float] = [r if (r := ops[i].ret) is not None else float("inf") for i in order]
    seq = [ops[i] for i in order]
    seen: set[tuple[int, Hashable]] = set()
    explored = 0
    best: list[int] = []
    complete_mask = 0
    for i in range(n):
        if seq[i].ret is not None:
            complete_mask |= 1 << i

    # iterative depth-first search over (linearized set, state)
    stack: list[tuple[int, Any, list[int]]] = [(0, model.init(), [])]
    while stack:
        done, state, path = stack.pop()
        if done & complete_mask == complete_mask:
            return CheckResult(True, explored, [seq[i] for i in path])
        if len(path) > len(best):
            best = path
        explored += 1
        if explored > limit:
            raise RuntimeError(f"linearizability search exceeded {limit} states")
        first_ret = min((rets[i] for i in range(n) if not done >> i & 1), default=float("inf"))
        for i in range(n):
            if done >> i & 1 or calls[i] > first_ret:
                continue
            for nxt in model.step(state, seq[i]):
                key = (done | 1 << i, nxt)
                if key in seen:
                    continue
                seen.add(key)
                stack.append((done | 1 << i, nxt, [*path, i]))
    return CheckResult(False, explored, [seq[i] for i in best])


def check_leases(ops: Sequence[Operation]) -> dict[str, CheckResult]:
    """Check a lease history per lease name (``args[0]``); the result of each."""
    by_name: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        by_name[op.args[0]].append(op)
    return {name: check(group, LeaseModel()) for name, group in by_name.items()}
