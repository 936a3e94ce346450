"""The local update hot path (``Engine.update`` of an existing key of a plain type) against the
general path, step by step: same states, same effects, same bytes on the wire, same errors.

The general path is forced by passing a factory that is not the key's type itself (a lambda
building it), which the hot path never takes; everything else is identical between the twin
engines (node id, process id, random seed, clock), so any difference is the hot path's."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtcoord import GCounter, InvalidArgument, LWWRegister, ORSet, PNCounter
from crdtcoord.codec import encode
from crdtcoord.engine import Changed, Engine, EngineConfig, Persist, Send, expiring_key
from crdtcoord.host.host import coalesce

TYPES: dict[str, type[Any]] = {
    "g": GCounter,
    "pn": PNCounter,
    "set": ORSet,
    "reg": LWWRegister,
}


def _twin(critical: bool, push: bool) -> Engine:
    cfg = EngineConfig(gossip_membership=False, ae_enabled=False, push_deltas=push)
    crit = (lambda key, state: key.startswith("c")) if critical else None
    eng = Engine("a", seeds=["b"], config=cfg, rng=random.Random(7), process_id=99, critical=crit)
    eng.start(0.0)
    return eng


def _op(kind: str, arg: int, style: str) -> Any:
    """An update of the key's type, as an op or as a callback."""
    if kind == "g":
        return (
            GCounter.Increment(arg) if style == "op" else lambda c, x: c.increment(x.replica, arg)
        )
    if kind == "pn":
        if style == "op":
            return PNCounter.Decrement(arg)
        return lambda c, x: c.decrement(x.replica, arg)
    if kind == "set":
        if style == "op":
            return ORSet.Remove(arg % 3) if arg % 4 == 0 else ORSet.Add(arg % 5)
        return lambda s, x: s.add(x.replica, arg % 5)
    return (
        LWWRegister.Assign(arg) if style == "op" else lambda r, x: r.assign(x.replica, arg, x.hlc)
    )


def _failing(kind: str, arg: int, how: str) -> Any:
    """A callback that mutates and then fails (raises, or returns something else)."""

    def fn(state: Any, ctx: Any) -> Any:
        _op(kind, arg, "fn")(state, ctx)
        if how == "raise":
            raise RuntimeError("boom")
        return 42

    return fn


def _effects(eng: Engine) -> list[Any]:
    """A poll's effects as the host executes them: its writes (one per key for a run of plain
    deltas, as the host coalesces them: the hot path folds a run of counter ops into one
    delta itself), then the sends and events in order."""
    effects = eng.poll()
    writes = coalesce([e for e in effects if isinstance(e, Persist)])
    out: list[Any] = []
    for e in writes:
        vv = None if e.vv is None else e.vv.to_dict()
        out.append(("P", e.key, encode(e.delta), vv, e.replace, e.op_id, e.delete))
    for e in effects:
        if isinstance(e, Persist):
            continue
        if isinstance(e, Send):
            out.append(("S", e.peer, e.data))
        elif isinstance(e, Changed):
            out.append(("C", e.key, e.origin, e.subscriptions))
        else:
            out.append(("E", repr(e)))
    return out


def _outcome(eng: Engine, key: str, factory: Any, fn: Any, now: float) -> Any:
    try:
        return ("ok", eng.update(key, factory, fn, now))
    except Exception as exc:  # (the twins must fail alike)
        return ("err", type(exc).__name__, str(exc))


step = st.one_of(
    st.tuples(
        st.just("update"),
        st.sampled_from(sorted(TYPES)),
        st.sampled_from(["k1", "k2", "c1"]),
        st.integers(0, 9),
        st.sampled_from(["op", "fn", "raise", "wrong"]),
    ),
    st.tuples(
        st.just("burst"),
        st.sampled_from(["g", "pn"]),
        st.sampled_from(["k1", "k2", "c1"]),
        st.integers(0, 3),
        st.integers(2, 6),
    ),
    st.tuples(st.just("poll")),
    st.tuples(st.just("tick"), st.floats(0.001, 0.05)),
    st.tuples(st.just("subscribe"), st.sampled_from(["k", "k1", "c"])),
    st.tuples(st.just("all"), st.booleans(), st.booleans()),
)


@settings(max_examples=150, deadline=None)
@given(
    critical=st.booleans(),
    push=st.booleans(),
    steps=st.lists(step, min_size=1, max_size=40),
)
def test_the_hot_path_does_what_the_general_path_does(
    critical: bool, push: bool, steps: list[tuple[Any, ...]]
) -> None:
    hot, general = _twin(critical, push), _twin(critical, push)
    now = 0.0
    for s in steps:
        match s:
            case ("update", kind, key, arg, style):
                t = TYPES[kind]
                if style in ("op", "fn"):
                    fn_h, fn_g = _op(kind, arg, style), _op(kind, arg, style)
                else:
                    fn_h, fn_g = _failing(kind, arg, style), _failing(kind, arg, style)
                a = _outcome(hot, key, t, fn_h, now)
                b = _outcome(general, key, lambda t=t: t(), fn_g, now)
                assert a == b
            case ("burst", kind, key, arg, times):  # a run of one op class on one key
                t = TYPES[kind]
                for _ in range(times):
                    a = _outcome(hot, key, t, _op(kind, arg, "op"), now)
                    b = _outcome(general, key, lambda t=t: t(), _op(kind, arg, "op"), now)
                    assert a == b
            case ("poll",):
                assert _effects(hot) == _effects(general)
            case ("tick", dt):
                now += dt
                hot.tick(now)
                general.tick(now)
            case ("subscribe", prefix):
                assert hot.subscribe(prefix=prefix) == general.subscribe(prefix=prefix)
            case ("all", on, coalesce):
                hot.report_all_changes(on, coalesce=coalesce)
                general.report_all_changes(on, coalesce=coalesce)
        for k in ("k1", "k2", "c1"):
            sh, sg = hot.get(k), general.get(k)
            assert (sh is None) == (sg is None)
            if sh is not None:
                assert sh.TYPE_TAG == sg.TYPE_TAG and encode(sh) == encode(sg)
            assert hot.version(k) == general.version(k)
        assert hot.digest() == general.digest()  # (each step: a key left un-dirtied shows)
    assert _effects(hot) == _effects(general)
    assert hot.backlog() == general.backlog()
    assert hot.digest() == general.digest()
    assert hot.next_deadline() == general.next_deadline()


def test_the_hot_path_refuses_what_the_general_path_refuses() -> None:
    eng = _twin(False, True)
    eng.update("k", GCounter, GCounter.Increment(1), 0.0)
    eng.poll()
    with pytest.raises(InvalidArgument, match="not an op of GCounter"):
        eng.update("k", GCounter, ORSet.Add(1), 0.0)
    with pytest.raises(InvalidArgument, match="not the class"):
        eng.update("k", GCounter, GCounter, 0.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="keys are non-empty str"):
        eng.update(["k"], GCounter, GCounter.Increment(1), 0.0)  # type: ignore[arg-type]
    gossiping = Engine("g")
    gossiping.start(0.0)
    members = gossiping.kind("$members")
    assert members is not None  # (the engine's own key exists: the hot path must refuse it)
    with pytest.raises(InvalidArgument, match="reserved"):
        gossiping.update("$members", members, lambda s, c: s, 0.0)
    with pytest.raises(InvalidArgument, match="must return the delta"):
        eng.update("k", GCounter, lambda c, x: None, 0.0)  # type: ignore[arg-type,return-value]
    assert eng.value("k") == 1
    # a callback that mutated before it failed: the mutation is written (memory == storage)
    with pytest.raises(RuntimeError):
        eng.update("k", GCounter, _failing("g", 2, "raise"), 0.0)
    assert eng.value("k") == 3
    persisted = [e for e in eng.poll() if isinstance(e, Persist)]
    # (the refused return wrote the state as it was, 1; the failing callback's mutation, 3)
    assert [(p.key, p.delta.value()) for p in persisted] == [("k", 1), ("k", 3)]


def test_a_local_change_is_reported_once_per_poll_when_coalescing() -> None:
    eng = _twin(False, True)
    eng.report_all_changes(coalesce=True)
    sub = eng.subscribe(key="k")
    for _ in range(5):
        eng.update("k", GCounter, GCounter.Increment(1), 0.0)
    assert [e for e in eng.poll() if isinstance(e, Changed)] == [Changed("k", None, (sub,))]
    eng.update("k", GCounter, GCounter.Increment(1), 0.0)
    assert [e for e in eng.poll() if isinstance(e, Changed)] == [Changed("k", None, (sub,))]
    eng.report_all_changes(coalesce=False)
    for _ in range(3):
        eng.update("k", GCounter, GCounter.Increment(1), 0.0)
    assert len([e for e in eng.poll() if isinstance(e, Changed)]) == 3


def test_switching_coalescing_off_mid_poll_reports_every_later_change() -> None:
    # (found by an attack on the hot path: it kept skipping keys reported while coalescing)
    for factory in (GCounter, lambda: GCounter()):
        eng = _twin(False, True)
        eng.update("k", GCounter, GCounter.Increment(1), 0.0)
        eng.poll()
        eng.report_all_changes(True, coalesce=True)
        eng.update("k", factory, GCounter.Increment(1), 0.0)
        eng.report_all_changes(True, coalesce=False)
        eng.update("k", factory, GCounter.Increment(1), 0.0)
        eng.update("k", factory, GCounter.Increment(1), 0.0)
        assert len([e for e in eng.poll() if isinstance(e, Changed)]) == 3


def test_a_missing_key_with_a_nonetype_factory_is_refused_cleanly() -> None:
    eng = _twin(False, True)
    for key, factory, message in (
        ("", type(None), "keys are non-empty str"),
        (5, type(None), "keys are non-empty str"),
        ("x", type(None), "factory must build a CRDT"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            eng.update(key, factory, lambda s, c: s, 0.0)  # type: ignore[arg-type]
    assert "x" not in eng and eng.poll() == []


def test_a_key_that_expires_while_its_update_runs_leaves_the_digest_usable() -> None:
    for factory in (GCounter, lambda: GCounter()):
        eng = _twin(False, True)
        key = expiring_key("x", 1500)
        eng.update(key, GCounter, GCounter.Increment(1), 0.0)

        def late(s: GCounter, ctx: Any, eng: Engine = eng) -> GCounter:
            d = s.increment(ctx.replica, 1)
            eng.tick(eng.now + 10.0)  # (an abuse: the key expires and goes meanwhile)
            return d

        eng.update(key, factory, late, eng.now)
        assert key not in eng
        assert eng.digest() == eng.recompute_digest()


def test_a_run_never_extends_a_delta_the_batch_joined_away() -> None:
    # (found by an attack: the 64th delta of a key's batch joins the list into a new object;
    # a run that began with that delta kept extending the old one, which was never sent)
    for factory in (GCounter, lambda: GCounter()):
        a = _twin(False, True)
        for _ in range(63):
            a.update("k", factory, GCounter.Increment(1), 0.0)
            a.poll()
        a.update("k", factory, GCounter.Increment(1), 0.0)  # the 64th: the batch is joined
        a.update("k", factory, GCounter.Increment(100), 0.0)
        a.poll()
        a.tick(1.0)
        b = Engine("b", seeds=["a"], config=a.config)
        b.start(1.0)
        for e in a.poll():
            if isinstance(e, Send):
                b.receive(e.data, 1.0)
        assert a.value("k") == b.value("k") == 164


def test_a_run_of_counter_ops_between_two_polls_is_one_write_and_one_batched_delta() -> None:
    eng = _twin(False, True)
    eng.update("k", GCounter, GCounter.Increment(1), 0.0)
    eng.poll()
    for _ in range(10):
        eng.update("k", GCounter, GCounter.Increment(2), 0.0)
    writes = [e for e in eng.poll() if isinstance(e, Persist)]
    assert [(w.key, w.delta.value()) for w in writes] == [("k", 21)]
    for _ in range(3):  # (a decrement run on a PN-counter as well)
        eng.update("p", PNCounter, PNCounter.Decrement(1), 0.0)
    eng.poll()
    for _ in range(4):
        eng.update("p", PNCounter, PNCounter.Decrement(1), 0.0)
    writes = [e for e in eng.poll() if isinstance(e, Persist)]
    assert [(w.key, w.delta.value()) for w in writes] == [("p", -7)]
    assert eng.value("k") == 21 and eng.value("p") == -7
