"""Gradient-inversion attacks, registered by name in ``ATTACKS``."""

from tipcore.attacks.base import (  # noqa: F401
    ATTACKS, Attack, AttackResult, Snapshot, create, drive, never_stop,
)
from tipcore.attacks import dlg, ig  # noqa: F401  (registers the attacks)
