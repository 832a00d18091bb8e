"""Privacy–utility frontier: attack PSNR against model accuracy per defense as its strength varies (precomputed)."""

from __future__ import annotations

import json

import streamlit as st

from app import resources
from app.components import defense_label, frontier_scatter

st.title("Privacy–utility frontier")
st.markdown(
    "Each defense has a strength knob (noise scale, ε, pruning ratio, channel ratio p …). Stronger settings "
    "make the attack's reconstruction worse (lower PSNR: **down** is more private) and usually cost model "
    "accuracy (**right** is more useful). A good defense sits towards the bottom right."
)

try:
    front = resources.frontier()
except Exception as exc:  # noqa: BLE001 - a broken asset must not take the page down
    front = None
    st.warning(f"The precomputed frontier could not be read: {' '.join(str(exc).split())[:300]}")

if front is None or not getattr(front, "points", ()):
    st.info(
        "The precomputed frontier is not available yet. Generate it with\n\n"
        f"```\n{resources.showcase_command('frontier')}\n```"
    )
else:
    points = list(front.points)
    st.plotly_chart(frontier_scatter(points), key="frontier")
    rows = [
        {"defense": defense_label(p.defense), "strength": f"{p.strength_name} = {float(p.strength):.3g}",
         "attack PSNR (dB)": round(float(p.psnr), 2), "SSIM": round(float(p.ssim), 3),
         "accuracy": round(float(p.accuracy), 4)}
        for p in points
    ]
    with st.expander("The numbers"):
        st.dataframe(rows, hide_index=True)
    with st.expander("How this was made (regenerate)"):
        command = getattr(front, "command", "")
        if command:
            st.code(command, language="bash")
        settings = dict(getattr(front, "settings", {}) or {})
        if settings:
            st.code(json.dumps(settings, indent=2, default=str), language="json")
    st.caption("Accuracy and PSNR come from separate runs at each strength; PSNR is per image on [0, 1] pixels. "
               "ε for TIP sets a noise scale only; TIP is not formally (ε, δ)-DP.")
