"""Generic convergence machine (lossy, duplicating, reordering delta network) for every type."""

from __future__ import annotations

from hypothesis import settings

from crdtcoord.testing import convergence_machine
from crdtcoord.types import (
    BoundedCounter,
    EWFlag,
    GCounter,
    GSet,
    Lease,
    LWWRegister,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
)

_S = settings(max_examples=40, stateful_step_count=30, deadline=None)

TestGCounterConverges = convergence_machine(GCounter).TestCase
TestPNCounterConverges = convergence_machine(PNCounter).TestCase
TestBoundedCounterConverges = convergence_machine(BoundedCounter).TestCase
TestGSetConverges = convergence_machine(GSet).TestCase
TestORSetConverges = convergence_machine(ORSet).TestCase
TestLWWRegisterConverges = convergence_machine(LWWRegister).TestCase
TestMVRegisterConverges = convergence_machine(MVRegister).TestCase
TestEWFlagConverges = convergence_machine(EWFlag).TestCase
TestORMapConverges = convergence_machine(ORMap).TestCase
TestLeaseConverges = convergence_machine(Lease).TestCase

for _case in (
    TestGCounterConverges,
    TestPNCounterConverges,
    TestBoundedCounterConverges,
    TestGSetConverges,
    TestORSetConverges,
    TestLWWRegisterConverges,
    TestMVRegisterConverges,
    TestEWFlagConverges,
    TestORMapConverges,
    TestLeaseConverges,
):
    _case.settings = _S
