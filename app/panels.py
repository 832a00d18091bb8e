"""Streamlit blocks that several pages share: TIP against the naive attacker and against the strongest
adaptive attacker (the best by PSNR of every adaptive iDLG), from the precomputed punchline (no compute)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import streamlit as st

from app import resources
from app.components import attacker_name, fmt_db, fmt_ratio, formula_lines, roughness_bars, upscale

WHY = ("Why: TIP leaves most of the update clean (only {k} of {c} conv channels get noise; the fc layer, the "
       "biases and every other channel are sent exactly), and its noise is easy to spot: it has no low-frequency "
       "part and is {ratio} the clean gradient where it is added, so the noised channels' high-frequency energy "
       "stands out by orders of magnitude. An attacker who leaves that noise out of what it matches (the channels "
       "it finds noised, or every kernel's high frequencies) matches the clean rest and gets the image back.")


def punchline() -> Any:
    try:
        return resources.punchline()
    except Exception:  # noqa: BLE001 - a broken asset must not take a page down; the punchline page says more
        return None


def adaptive_entry(punch: Any) -> Any:
    """The punchline's strongest adaptive attacker against TIP (``Punchline.best_adaptive``), or None."""
    best = getattr(punch, "best_adaptive", None)
    return best("tip") if callable(best) else None


def best_of(entry: Any) -> str:
    """How the entry's attacker was chosen: "the best of 8 adaptive attackers" (or the one that was run)."""
    n = len(getattr(entry, "candidates", None) or {})
    return f"the best of {n} adaptive attackers" if n > 1 else "the one adaptive attacker run"


def candidates_line(entry: Any) -> str:
    """Every adaptive attacker's PSNR, strongest first: "iDLG + drop 39.0 dB · iDLG + low-pass 31.2 dB"."""
    scores = sorted((getattr(entry, "candidates", None) or {}).items(), key=lambda kv: -float(kv[1]))
    return " · ".join(f"{attacker_name(a)} {fmt_db(float(v))} dB" for a, v in scores)


def why_sentence(punch: Any) -> str:
    entry = adaptive_entry(punch)
    analysis = dict(getattr(entry, "analysis", {}) or {})
    channels = list(getattr(punch, "channels", ()) or ())
    k = sum(len(c.noised) for c in channels) or "a few"
    c = sum(len(c.roughness) for c in channels) or "all"
    ratio = analysis.get("noise_to_signal")
    return WHY.format(k=k, c=c, ratio=f"about {fmt_ratio(ratio)}" if ratio is not None else "many times")


def tip_vs_adaptive(punch: Any, *, key: str, show_channels: bool = True) -> bool:
    """Original | TIP vs naive iDLG | TIP vs the best adaptive iDLG (named, with how many it was the best of),
    the sentence on why, and (optionally) the per-channel view of an attacker that flags channels. Returns
    False when the punchline lacks these entries."""
    if punch is None or not hasattr(punch, "entry"):
        return False
    naive, adaptive = punch.entry("tip", "idlg"), adaptive_entry(punch)
    if naive is None or adaptive is None:
        return False
    winner = attacker_name(adaptive.attack, getattr(adaptive, "label", ""))
    cols = st.columns(3)
    shown = ((None, "Private image", punch.original),
             (naive, "TIP vs the naive iDLG", naive.image),
             (adaptive, f"TIP vs {winner}", adaptive.image))
    for col, (entry, title, image) in zip(cols, shown):
        with col:
            st.markdown(f"**{title}**")
            st.image(upscale(np.asarray(image), 5), width=160)
            if entry is None:
                st.caption(getattr(punch, "label_name", ""))
                continue
            st.metric("PSNR (dB)", fmt_db(float(entry.psnr)), help="Above ~25 dB the image is plainly recognisable.")
            det = dict(entry.analysis or {}).get("detection")
            found = ""
            if isinstance(det, dict) and det.get("precision") is not None:
                found = (f"found {det.get('true_positives', 0)} of TIP's {det.get('noised', 0)} noised channels "
                         f"from the update alone (precision {float(det['precision']):.2f})")
            if entry is adaptive:
                st.caption(f"{best_of(entry)} against this update" + (f"; {found}" if found else ""),
                           help=f"Every adaptive attacker's PSNR here: {candidates_line(entry)}.")
            else:
                st.caption(found or "matches the whole update, TIP's noise included")
    st.info(why_sentence(punch))
    if show_channels and getattr(punch, "channels", ()):
        st.plotly_chart(roughness_bars(punch.channels), key=f"roughness_{key}")
        flagger = getattr(punch, "channels_attack", "") or adaptive.attack
        # A winner that flags no channels (one matching only low frequencies, say) has none to outline: the
        # chart shows the flags of the best adaptive attacker that does, and says so.
        whose = (f"{attacker_name(flagger)} (the strongest attacker here that flags channels; {winner} flags "
                 "none)" if flagger != adaptive.attack else winner)
        st.caption("Each bar is one output channel of a conv layer in the update the client sent with TIP, and its "
                   f"ratio is computed from the update alone. Outlined: the channels {whose} flagged as noised; "
                   "the defense's own record (vermillion) is used only to score the guess.")
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
