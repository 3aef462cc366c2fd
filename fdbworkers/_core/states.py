"""The worker's states and the transitions between them (pure: a table and a check).

::

    STARTING ──register──▶ ACTIVE ◀──heartbeat commits again── FENCED
        │                   │  ╲──no heartbeat for timeout - margin──▶ FENCED
        │                   │
        │                   ├──own record gone (evicted)──▶ REJOINING ──register──▶ ACTIVE
        │                   ├──own record has a newer incarnation──▶ SUPERSEDED
        └───────────────────┴──drain, exit, cancellation──▶ DRAINING ──▶ LEFT

FENCED and REJOINING may also be superseded or drained, and a superseded worker still
leaves (its own records are gone, so the leave only stops its work). LEFT is final.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final


class WorkerState(enum.Enum):
    """The worker's state machine (inspect ``worker.state``; ``wait_state_change`` waits).
    :data:`TRANSITIONS` lists every allowed change."""

    STARTING = "starting"
    #: Registered, lease valid: may run jobs.
    ACTIVE = "active"
    #: No heartbeat committed for ``timeout - fence_margin``: jobs must stop.
    FENCED = "fenced"
    #: Found its own record gone (evicted): re-registering as a new incarnation.
    REJOINING = "rejoining"
    #: Leaving gracefully (drain requested or exit).
    DRAINING = "draining"
    LEFT = "left"
    #: Another process registered with the same worker id: this one stopped.
    SUPERSEDED = "superseded"


_S = WorkerState
#: state -> the states it may change to (a state "changing" to itself is no change).
TRANSITIONS: Final[Mapping[WorkerState, frozenset[WorkerState]]] = {
    _S.STARTING: frozenset({_S.ACTIVE, _S.DRAINING}),
    _S.ACTIVE: frozenset({_S.FENCED, _S.REJOINING, _S.SUPERSEDED, _S.DRAINING}),
    _S.FENCED: frozenset({_S.ACTIVE, _S.REJOINING, _S.SUPERSEDED, _S.DRAINING}),
    _S.REJOINING: frozenset({_S.ACTIVE, _S.SUPERSEDED, _S.DRAINING}),
    _S.SUPERSEDED: frozenset({_S.DRAINING}),
    _S.DRAINING: frozenset({_S.LEFT}),
    _S.LEFT: frozenset(),
}


def allowed(old: WorkerState, new: WorkerState) -> bool:
    """True if the worker may go from ``old`` to ``new`` (or stays where it is)."""
    return old is new or new in TRANSITIONS[old]
