"""Defenses, registered by name in ``DEFENSES``."""

from tipcore.defenses.base import (  # noqa: F401
    DEFENSES, DefenseDiagnostics, LayerDiagnostics, bind_round, create, describe, takes_clip,
)
from tipcore.defenses import none, dp, prune, soteria, tip  # noqa: F401  (registers the defenses)
