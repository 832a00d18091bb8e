"""How TIP works: Grad-CAM α, the channels it selects, and the high-frequency noise on their kernels.

Grad-CAM runs once per (model, image, round) and is cached; the sliders only call ``preview()``, which
redoes TIP's cheap half (selection and noise). No attack ever runs here.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import controls, grid_panel, panels, resources, state, tip_setting
from app.components import (
    adaptive_labels, alpha_bars, defense_label, heatmap_overlay, kernel_figure, noise_energy_bars, split_attack,
    spectrum_figure, upscale,
)

INTRO = {
    "tip": "TIP asks Grad-CAM which output channels of each convolution drive the true class on the client's own "
           "image, keeps the top fraction **p** of them, and adds Gaussian noise to those channels' kernels **only "
           "in the high-frequency part of each kernel's 2D spectrum** (outside cutoff **r**).",
    "tip_random": "The random-channel ablation adds TIP's high-frequency noise (outside cutoff **r**) to a "
                  "**random** fraction **p** of each convolution's output channels, ignoring Grad-CAM.",
    "tip_fullband": "The full-band ablation picks the same top-**p** Grad-CAM channels as TIP, but adds the noise "
                    "to **every bin** of their kernels' spectra, DC included: there is no cutoff.",
}

resources.configure_threads()
s = state.current()

st.title("How TIP works")
intro = st.empty()  # filled once the variant is known
for problem in state.url_problems():
    st.warning(problem)

# ------------------------------------------------------------------------------------------ controls
# TIP's own controls sit above the charts they change, so a slider move shows its effect without scrolling.
variant = tip_setting.tip_controls()
intro.markdown(INTRO.get(variant, INTRO["tip"]) + " Move the sliders: only the cheap selection-and-noise step "
               "is recomputed, never an attack.")

# ------------------------------------------------------------------------------------------ sidebar
image = tip_setting.sidebar_image(s)

# What the attackers rebuild at this setting, right under the sliders (one line; the pictures follow the
# spectrum, which must stay in view when r moves): read from the precomputed grid.
grid_panel.summary(s, image)

setting = tip_setting.explained(s, image)
explainer, preview, explainer_key = setting.explainer, setting.preview, setting.key

layers = list(preview.layers)
names = [layer.name for layer in layers]
summary = dict(preview.summary)

# ------------------------------------------------------------------------------------------ layer / channel
c_layer, c_channel = st.columns(2)
with c_layer:
    layer_name = state.bind(
        st.selectbox, "Conv layer", "layer", options=names, fallback=names[0],
        format_func=lambda n: f"{n} ({'×'.join(map(str, preview.layer(n).kernel_size))}, "
                              f"{np.asarray(preview.layer(n).alpha).shape[-1]} channels)",
        help="Which convolution to inspect: its Grad-CAM heatmap, α per channel, and one kernel's spectrum.",
    )
diag = preview.layer(layer_name)
alpha = np.asarray(diag.alpha)
c_out = int(alpha.shape[-1])
selected = sorted({c for sel in diag.selected for c in sel})
# A channel picked for another image, layer or variant says nothing here if it is not selected now: start
# from a selected one. (Within one context the visitor may still pick an unselected channel on purpose.)
channel_context = (explainer_key, layer_name, s.tip_variant)
shown_channel = st.session_state.get(state.widget_key("channel"), s.channel)
if (st.session_state.get("channel_context", channel_context) != channel_context and selected
        and shown_channel not in selected):
    state.apply(channel=selected[0])
st.session_state["channel_context"] = channel_context
with c_channel:
    channel = state.bind(
        st.selectbox, "Output channel", "channel", options=list(range(c_out)),
        fallback=selected[0] if selected else 0,
        format_func=lambda c: f"{c} · selected, noised" if c in selected else f"{c}",
        help="The kernel W[c, 0] (input channel 0) drawn below, before and after TIP, in space and frequency.",
    )

# ------------------------------------------------------------------------------------------ α and spectrum
kv = preview.kernel(layer_name, int(channel), 0)
col_alpha, col_spectrum = st.columns([1.3, 1], gap="medium")
with col_alpha:
    st.plotly_chart(alpha_bars(alpha[0], diag.selected[0] if diag.selected else (), layer_name, len(selected)),
                    key="alpha")
with col_spectrum:
    st.plotly_chart(spectrum_figure(kv.spectrum_before, kv.spectrum_after, kv.mask,
                                    f"|DFT| of kernel W[{channel}, 0] (DC in the middle)"), key="spectrum")
mask = np.asarray(kv.mask)
noised, total = int(mask.sum()), int(mask.size)
if not kv.selected:
    st.markdown(f"Channel {channel} is **not selected**: its kernel is sent unchanged (difference 0). Pick a "
                "channel marked 'selected' to see the noise.")
elif variant == "tip_fullband":
    st.markdown(f"Channel {channel} **is selected**: the full-band ablation puts noise in all {total} frequency "
                "bins of its kernels, DC and the lowest frequencies included; no bin is left as it was.")
elif noised == total:
    st.markdown(f"Channel {channel} **is selected**: at cutoff r = {s.cutoff:g} its kernels get noise in all "
                f"{total} frequency bins, DC included.")
elif noised == 0:
    st.markdown(f"Channel {channel} **is selected**, but a {mask.shape[0]} × {mask.shape[1]} kernel has no bin "
                f"beyond cutoff r = {s.cutoff:g}: this layer gets no noise.")
else:
    st.markdown(f"Channel {channel} **is selected**: its kernels get noise in {noised} of {total} frequency bins; "
                "the bins inside the white outline (DC and the lowest frequencies) are left exactly as they were.")

grid_panel.reconstructions(s, image)

# ------------------------------------------------------------------------------------------ key numbers
total_k = sum(len(layer.selected[0]) if layer.selected else 0 for layer in layers)
total_c = sum(int(np.asarray(layer.alpha).shape[-1]) for layer in layers)
m = st.columns(5)
beta = float(summary.get("beta", float("nan")))
sigma = float(summary.get("sigma", float("nan")))
m[0].metric("β (per-element scale)", f"{beta:.3g}",
            help="Std of the white noise before the high-pass projection. Calibrated: β = σ / n_cam / L.")
m[1].metric("σ of the round", f"{sigma:.3g}" if np.isfinite(sigma) else "direct β",
            help="The Gaussian-mechanism scale at (ε, δ, C) for this round (FedSGD: gradient units; FedAvg: "
                 "T·η·C/B·sqrt(2 ln(1.25/δ))/ε). The same σ that DP spreads over every parameter.")
m[2].metric("Channels noised", f"{total_k}/{total_c}",
            help="Σ over conv layers of k = max(1, floor(p · C_out)); every other channel is sent clean.")
m[3].metric("Layers L", f"{len(layers)}", help="Conv layers TIP targets (all Conv2d, 1 × 1 included).")
m[4].metric("Noise energy Σ ΔW²", f"{float(summary.get('noise_energy', 0.0)):.3g}",
            help="Total squared noise added to the update, all layers together.")
cutoff_text = "every bin" if variant == "tip_fullband" else f"r = {s.cutoff:g}"
st.caption(f"{defense_label(s.tip_variant)} · p = {s.ratio:g}, {cutoff_text} · "
           + (f"ε = {s.epsilon:g}, δ = {s.delta:.0e}" if s.noise == "calibrated" else f"direct β = {s.beta:g}")
           + (f" · {preview.notes}" if preview.notes and s.noise == "calibrated" else ""))
st.markdown(
    f"**Selected in {layer_name}**: channels {', '.join(map(str, selected)) or '—'} "
    f"(k = {len(selected)} of {c_out}) · per-element noise std {diag.effective_std:.3g} · β = {diag.beta:.3g}"
)
st.caption(
    "α is the signed Grad-CAM weight: the spatial mean of ∂(true-class logit)/∂(channel's output map). The "
    "heatmap (ReLU of the α-weighted maps) shows where in the image those channels respond. "
    + ("The random-channel ablation ignores α and picks channels at random." if variant == "tip_random" else
       "TIP noises the largest-α channels: those that carry the image's semantics.")
)

# ------------------------------------------------------------------------------------------ image, Grad-CAM, kernel
col_img, col_cam, col_kernel = st.columns([1, 1.3, 2.2], gap="medium")
with col_img:
    st.markdown("**Private image**")
    st.image(upscale(image.image, 6), caption=image.caption, width=192)
with col_cam:
    try:
        heat = explainer.heatmap(layer_name)
    except ValueError as exc:
        heat = None
        st.error(str(exc))
    if heat is not None:
        st.plotly_chart(heatmap_overlay(image.image, heat, f"Grad-CAM at {layer_name}"), key="gradcam")
with col_kernel:
    st.plotly_chart(kernel_figure(kv.before, kv.after, kv.difference,
                                  f"Kernel W[{channel}, 0] of {layer_name} in the update"), key="kernel")
controls.gallery_browser()

# ------------------------------------------------------------------------------------------ per layer
st.plotly_chart(noise_energy_bars(names, [layer.noise_energy for layer in layers],
                                  [layer.effective_std for layer in layers]), key="energy")
st.caption("Noise lands only on conv weights: biases, BatchNorm, the fc layer and (at r = 0.5) 1 × 1 kernels "
           "stay clean. See Teach for what that means for privacy.")
st.page_link("views/leaks.py", label="See the whole update, channel by channel and the fc rows: What leaks",
             icon=":material/visibility:")

# ------------------------------------------------------------------------------------------ adaptive attacker
st.subheader("Does it stop an attacker who knows TIP?")
st.markdown(
    "The noise above is what a *naive* attacker has to fit. An attacker who knows the defense reads the "
    "received update first: the noised channels are the ones whose kernels carry almost only high-frequency "
    "energy. Precomputed on the punchline image (CIFAR-10 cat, LeNet, FedSGD, clip 5, TIP at its defaults, "
    "300 iDLG steps):"
)
if not panels.tip_vs_adaptive(panels.punchline(), key="tip_page"):
    st.info("The precomputed comparison is not available yet. Generate it with\n\n"
            f"```\n{resources.showcase_command('punchline')}\n```")
_best = panels.adaptive_entry(panels.punchline())  # the strongest adaptive attacker on the punchline image
_mode = split_attack(_best.attack)[1] if _best is not None else ""
st.caption("Try it on your own setting: on Live attack, set **Attacker knows the defense** to "
           + (f"*{adaptive_labels().get(_mode, _mode)}* (the strongest above)." if _mode else "one of its attackers."))
