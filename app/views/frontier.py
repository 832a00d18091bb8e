"""Privacy–utility frontier: attack PSNR against utility and defense strength, for the naive attacker and
the best adaptive one (who knows the defense), from the sweep's precomputed privacy curves."""

from __future__ import annotations

import json

import streamlit as st

from app import resources
from app.components import ATTACKER_LABELS, CURVE_AXES, attack_label, defense_label, knob_symbol
from app.components import privacy_curves_figure, strength_facets

X_LABELS = {
    "accuracy": "held-out accuracy",
    "update_cosine": "update cosine",
    "noise_scale": "noise scale",
    "noise_to_signal": "noise-to-signal",
}

st.title("Privacy–utility frontier")
st.markdown(
    "Each defense has a strength knob (noise scale, ε, pruning ratio, channel ratio p …). Stronger settings "
    "make the attack's reconstruction worse (lower PSNR: **down** is more private) and usually cost model "
    "accuracy (**right** is more useful). Every setting is attacked twice: by the **naive** attacker "
    "(dashed, open markers), who matches the update as if there were no defense, and by the best "
    "**adaptive** attacker (solid), who knows the defense, e.g. finds TIP's noised channels and leaves them "
    "out. A defense protects only where the solid curve is low."
)

try:
    curves = resources.privacy_curves()
except Exception as exc:  # noqa: BLE001 - a broken asset must not take the page down
    curves = None
    st.warning(f"The precomputed privacy curves could not be read: {' '.join(str(exc).split())[:300]}")

if curves is None or not curves.get("points"):
    st.info(
        "The privacy curves have not been computed yet (the sweep attacks every strength of every defense with "
        "both attackers, so it takes a while). Make them with\n\n"
        f"```\n{resources.showcase_command('privacy curves')}\n```\n\n"
        "Meanwhile, compare a naive and an adaptive attacker yourself on **Live attack** (*Attacker knows the "
        "defense*)."
    )
    st.stop()

points = list(curves["points"])
reference = dict(curves.get("reference") or {})
axes = [x for x in CURVE_AXES if any(p.get(x) is not None for p in points)]
x = st.radio("Horizontal axis", axes, horizontal=True, key="frontier_x", format_func=lambda v: X_LABELS.get(v, v),
             help="**Held-out accuracy**: utility from scratch, "
                  + str(dict(curves.get("settings") or {}).get("utility", "FedAvg from random init in which every "
                                                                 "client applies the defense"))
                  + ". **Update cosine**: how close the defended update stays to the clean one. "
                  "**Noise scale**: the defense's own noise parameter, where it has one. **Noise-to-signal**: "
                  "‖defended − clean‖ / ‖clean‖ on the slices the defense changed.")
st.plotly_chart(privacy_curves_figure(points, reference, x), key="frontier")
st.caption(
    f"Reference lines: a random-pixel image scores {float(reference.get('random_psnr', float('nan'))):.1f} dB "
    f"and a constant grey guess {float(reference.get('grey_psnr', float('nan'))):.1f} dB against the same "
    "images: an attack at or below them has learned nothing about the picture. Points without a value on this "
    "axis are left out."
)
st.plotly_chart(strength_facets(points, reference), key="facets")

rows = [
    {"defense": defense_label(p["defense"]),
     "strength": f"{knob_symbol(p['defense'], p['knob'])} = {float(p['strength']):.3g}" if p["knob"] else "—",
     "attacker": ATTACKER_LABELS.get(p["attacker"], p["attacker"]), "attack": attack_label(p["attack"]),
     "attack PSNR (dB)": round(float(p["psnr"]), 2), "± std": round(float(p["psnr_std"]), 2),
     "SSIM": round(float(p["ssim"]), 3), "label accuracy": round(float(p["label_accuracy"]), 2),
     "held-out accuracy": None if p.get("accuracy") is None else round(float(p["accuracy"]), 4),
     "update cosine": round(float(p["update_cosine"]), 4), "noise-to-signal": float(f"{float(p['noise_to_signal']):.3g}"),
     "images": int(p["images"])}
    for p in points
]
with st.expander("The numbers"):
    st.dataframe(rows, hide_index=True)
with st.expander("How this was made (regenerate)"):
    command = curves.get("command", "")
    if command:
        st.code(command, language="bash")
    settings = dict(curves.get("settings") or {})
    if settings:
        st.code(json.dumps(settings, indent=2, default=str), language="json")
st.caption("PSNR is per image on [0, 1] pixels, mean (± std) over the images. ε for TIP sets a noise scale "
           "only; TIP is not formally (ε, δ)-DP.")
