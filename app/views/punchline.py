"""First page: a precomputed attack, no compute. Original | no defense | DP | TIP, with the numbers."""

from __future__ import annotations

import json

import numpy as np
import streamlit as st

from app import panels, resources
from app.components import attack_label, attacker_name, defense_label, fmt_db, upscale
from app.state import TIP_FAMILY


def _names(punch: object, value: object) -> str:
    """Class names of labels, in the label space of the punchline's gallery image (numbers if unknown)."""
    settings = dict(getattr(punch, "settings", {}) or {})
    ids = settings.get("image_ids") or [getattr(punch, "image_id", "")]
    item = resources.gallery_item(str(ids[0])) if ids else None
    out = []
    for v in np.atleast_1d(value):
        name = resources.class_name(item.dataset, item.num_classes, int(v)) if item else str(int(v))
        out.append(f"{name} ({int(v)})" if name != str(int(v)) else name)
    return ", ".join(out)


st.title("Can the server see your photo in a gradient?")
st.markdown(
    "In federated learning a client never uploads its data, only a **model update**. An honest-but-curious "
    "server can still run a *gradient-inversion attack* on that update and rebuild the private image. "
    "Below: one private image, and what the attack recovered from the update the client sent with no "
    "defense, with differential privacy, and with **TIP** (targeted interpretable perturbation, "
    "[arXiv 2602.11633](https://arxiv.org/abs/2602.11633)): first against the usual attacker, who ignores "
    "the defense, then against the strongest of the attackers we built that know TIP and adapt to it."
)

try:
    punch = resources.punchline()
except Exception as exc:  # noqa: BLE001 - a broken asset must not take the first page down
    punch = None
    st.warning(f"The precomputed results could not be read: {' '.join(str(exc).split())[:300]}")

if punch is None:
    st.info(
        "The precomputed comparison is not available yet. Generate it with\n\n"
        f"```\n{resources.showcase_command('punchline')}\n```\n\n"
        "Meanwhile, run one yourself on the **Live attack** page (the class demo takes a few seconds)."
    )
else:
    entries = list(getattr(punch, "entries", ()))
    cols = st.columns(1 + len(entries))
    with cols[0]:
        st.markdown("**Private image**")
        st.image(upscale(np.asarray(punch.original), 6), width="stretch")
        label_name = getattr(punch, "label_name", "")
        st.caption("what the client trained on; never sent" + (f" · {label_name}" if label_name else ""))
    for col, entry in zip(cols[1:], entries):
        with col:
            title = getattr(entry, "title", "") or defense_label(getattr(entry, "defense", ""))
            st.markdown(f"**{title}**")
            st.image(upscale(np.asarray(entry.image), 6), width="stretch")
            attack = str(getattr(entry, "attack", "idlg") or "idlg")
            if attack == "idlg":
                st.caption("attacker: iDLG (naive)", help="Matches the whole update, the defense's noise included.")
            else:
                recorded = str(getattr(entry, "label", "") or "")
                st.caption(f"attacker: {attacker_name(attack, recorded)}, {panels.best_of(entry)}",
                           help=f"{attack_label(attack, recorded)}: adapts its matching to the defense, from the "
                                "update alone. The picture is the strongest adaptive attacker's against this "
                                f"update; every one's PSNR: {panels.candidates_line(entry)}.")
            psnr, ssim = float(entry.psnr), float(entry.ssim)
            true, pred = getattr(entry, "label_true", None), getattr(entry, "label_pred", None)
            # One above the other: side by side in a fifth of the page, the labels were cut to "PSNR (…".
            st.metric("PSNR (dB)", fmt_db(psnr), help="Peak signal-to-noise ratio between the private image and "
                      "the reconstruction (data range 1). Above ~25 dB the image is plainly recognisable.")
            st.metric("SSIM", f"{ssim:.2f}", help="Structural similarity, 1 = identical, near 0 = unrelated.")
            if true is not None and pred is not None:
                ok = list(np.atleast_1d(true)) == list(np.atleast_1d(pred))
                verdict = "✓ leaked" if ok else "✗ wrong"
                st.caption(f"label inferred by the attacker: {_names(punch, pred)} {verdict}")

    if panels.adaptive_entry(punch) is not None:
        st.info(panels.why_sentence(punch))
    tip_leaks = any(
        str(getattr(e, "defense", "")) in TIP_FAMILY
        and list(np.atleast_1d(getattr(e, "label_true", -1))) == list(np.atleast_1d(getattr(e, "label_pred", -2)))
        for e in entries
    )
    if tip_leaks:
        st.caption("Note the label under TIP: iDLG reads it off the last (fc) layer's gradient, which TIP leaves "
                   "untouched, so the class leaks even where the naive attacker's picture does not.")
    st.page_link("views/live.py", label="Run it yourself: Live attack", icon=":material/play_circle:")
    st.page_link("views/tip.py", label="See what TIP changes: How TIP works", icon=":material/tune:")

    with st.expander("How these were made (regenerate)"):
        command = getattr(punch, "command", "")
        if command:
            st.code(command, language="bash")
        settings = dict(getattr(punch, "settings", {}) or {})
        if settings:
            st.code(json.dumps(settings, indent=2, default=str), language="json")

st.divider()
st.caption(
    "PSNR and SSIM are computed per image on [0, 1] pixels. TIP is a heuristic defense, not formal "
    "differential privacy: see the Teach page for what it does and does not guarantee."
)
