"""Streamlit blocks that several pages share: TIP against the naive attacker and against the one that
drops TIP's noised channels, from the precomputed punchline (no compute)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import streamlit as st

from app import resources
from app.components import fmt_db, fmt_ratio, formula_lines, roughness_bars, upscale

ADAPTIVE_ATTACK = "idlg_drop"

WHY = ("Why: TIP leaves most of the update clean (only {k} of {c} conv channels get noise; the fc layer, the "
       "biases and every other channel are sent exactly), and its noise is easy to spot: it has no low-frequency "
       "part and is {ratio} the clean gradient where it is added, so the noised channels' high-frequency energy "
       "stands out by orders of magnitude. An attacker who leaves those channels out matches the clean rest and "
       "gets the image back.")


def punchline() -> Any:
    try:
        return resources.punchline()
    except Exception:  # noqa: BLE001 - a broken asset must not take a page down; the punchline page says more
        return None


def why_sentence(punch: Any) -> str:
    entry = punch.entry("tip", ADAPTIVE_ATTACK) if hasattr(punch, "entry") else None
    analysis = dict(getattr(entry, "analysis", {}) or {})
    channels = list(getattr(punch, "channels", ()) or ())
    k = sum(len(c.noised) for c in channels) or "a few"
    c = sum(len(c.roughness) for c in channels) or "all"
    ratio = analysis.get("noise_to_signal")
    return WHY.format(k=k, c=c, ratio=f"about {fmt_ratio(ratio)}" if ratio is not None else "many times")


def tip_vs_adaptive(punch: Any, *, key: str, show_channels: bool = True) -> bool:
    """Original | TIP vs naive iDLG | TIP vs iDLG that drops the noised channels, the sentence on why, and
    (optionally) the attacker's per-channel view. Returns False when the punchline lacks these entries."""
    if punch is None or not hasattr(punch, "entry"):
        return False
    naive, adaptive = punch.entry("tip", "idlg"), punch.entry("tip", ADAPTIVE_ATTACK)
    if naive is None or adaptive is None:
        return False
    cols = st.columns(3)
    shown = ((None, "Private image", punch.original),
             (naive, "TIP vs the naive iDLG", naive.image),
             (adaptive, "TIP vs iDLG that drops the noised channels", adaptive.image))
    for col, (entry, title, image) in zip(cols, shown):
        with col:
            st.markdown(f"**{title}**")
            st.image(upscale(np.asarray(image), 5), width=160)
            if entry is None:
                st.caption(getattr(punch, "label_name", ""))
                continue
            st.metric("PSNR (dB)", fmt_db(float(entry.psnr)), help="Above ~25 dB the image is plainly recognisable.")
            det = dict(entry.analysis or {}).get("detection")
            if isinstance(det, dict) and det.get("precision") is not None:
                st.caption(f"found {det.get('true_positives', 0)} of TIP's {det.get('noised', 0)} noised channels "
                           f"from the update alone (precision {float(det['precision']):.2f})")
            else:
                st.caption("matches the whole update, TIP's noise included")
    st.info(why_sentence(punch))
    if show_channels and getattr(punch, "channels", ()):
        st.plotly_chart(roughness_bars(punch.channels), key=f"roughness_{key}")
        st.caption("Each bar is one output channel of a conv layer in the update the client sent with TIP. "
                   "The attacker computes this ratio from the update alone and drops the channels far above "
                   "the rest; the defense's own record (vermillion) is used only to score the guess.")
    return True


def formula(tex: str) -> None:
    """A display formula; one with several parts is also drawn in lines, shown instead on a narrow screen
    (app/main.py's CSS picks the copy by the screen's width: st-key-tex_wide_* / st-key-tex_narrow_*)."""
    narrow = formula_lines(tex)
    if narrow is None:
        st.latex(tex)
        return
    key = hashlib.sha1(tex.encode()).hexdigest()[:10]
    with st.container(key=f"tex_wide_{key}"):
        st.latex(tex)
    with st.container(key=f"tex_narrow_{key}"):
        st.latex(narrow)
