"""Click models: implicit relevance judgments from click logs, behind one interface.

Sessions (``Session``), their encoding and the simulators live in ``click_models_data`` and
``click_models_sim``; this module re-exports them so callers import from one place.
"""

from __future__ import annotations

from ltr.click_models_data import (
    ClickModelError,
    EncodedSessions,
    Pair,
    Session,
    encode_sessions,
)
from ltr.click_models_sim import (
    SIMULATORS,
    attractiveness_from_grades,
    attractiveness_from_judgments,
    simulate,
    simulate_cascade,
    simulate_dbn,
    simulate_pbm,
    simulate_sdbn,
)

__all__ = [
    "SIMULATORS",
    "ClickModelError",
    "EncodedSessions",
    "Pair",
    "Session",
    "attractiveness_from_grades",
    "attractiveness_from_judgments",
    "encode_sessions",
    "simulate",
    "simulate_cascade",
    "simulate_dbn",
    "simulate_pbm",
    "simulate_sdbn",
]
