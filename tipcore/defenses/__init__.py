"""Defenses, registered by name in ``DEFENSES``."""

from tipcore.defenses.base import DEFENSES, DefenseDiagnostics, LayerDiagnostics, create, describe  # noqa: F401
from tipcore.defenses import none, dp, prune, soteria, tip  # noqa: F401  (registers the defenses)
