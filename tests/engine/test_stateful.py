"""Hypothesis stateful test of the engine: any schedule of faults converges once healed."""

from __future__ import annotations

from hypothesis import settings

from crdtcoord.testing.machines import replication_machine

TestReplication = replication_machine().TestCase
TestReplication.settings = settings(max_examples=120, stateful_step_count=50, deadline=None)
