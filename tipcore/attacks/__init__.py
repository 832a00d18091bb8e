"""Gradient-inversion attacks, registered by name in ``ATTACKS``: the naive ones (dlg, idlg, ig) and their
adaptive variants ({base}_drop, {base}_lowpass, {base}_noise_aware), all configurations of one template."""

from tipcore.attacks.base import (  # noqa: F401
    ATTACK_PRESETS, ATTACKS, Attack, AttackResult, Snapshot, base_attack, create, drive, never_stop, preset_options,
)
from tipcore.attacks import dlg, ig  # noqa: F401  (registers the attacks)
from tipcore.attacks.matching import ADAPTIVE_MODES, MATCH_MODES  # noqa: F401
