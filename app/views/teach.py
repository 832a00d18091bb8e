"""Teach: the federated round, the threat model, what the pictures show, and what TIP does not guarantee."""

from __future__ import annotations

import streamlit as st

from app import panels, state, tour

st.title("Teach: what is going on here")

st.header("Guided tour")
st.markdown(
    f"{len(tour.STEPS)} steps, about a minute each. Every button sets the sidebar (image, model, defenses, "
    "sliders) for its step and opens the page to look at; come back here for the next one. The settings land "
    "in the address bar, so a step's page can be shared as a link."
)


def _go(index: int) -> None:
    step = tour.STEPS[index]
    tour.apply(step)
    st.session_state["tour_step"] = index
    # The step's settings go into the opened page's URL too (pages that draw no sidebar do not publish).
    st.switch_page(step.page, query_params=state.current().to_query())


current = st.session_state.get("tour_step")
for i, step in enumerate(tour.STEPS):
    with st.container(border=True):
        head, go = st.columns([3, 1], vertical_alignment="center")
        done = " · last visited" if current == i else ""
        head.markdown(f"**Step {i + 1}. {step.title}**{done}")
        if go.button(f"Step {i + 1}: {tour.PAGES[step.page]}", key=f"tour_{i}", width="stretch",
                     help=f"Sets the sidebar for this step and opens {tour.PAGES[step.page]}."):
            _go(i)
        st.markdown(step.look_for)
        panels.formula(step.formula)
        if step.formula_note:
            st.caption(step.formula_note)

st.header("1. One federated round")
st.markdown(
    """
A server holds a global model θ_g and sends it to clients. A client trains on its **private** data and sends
back only an **update**:

* **FedSGD**: the gradient g = ∇θ loss(x, y) of its batch.
* **FedAvg**: it takes T local SGD steps (learning rate η, gradient clipped to norm C) and sends θ_g − θ_local.

The server averages the updates of many clients into the next global model. The data never leaves the client,
but the update is a function of it.
"""
)

st.header("2. The threat model")
st.markdown(
    """
The server is **honest but curious**: it follows the protocol, but looks hard at what it receives. It knows
the architecture and θ_g (it sent them); in the paper's study it is also told the label. **Gradient
inversion** (DLG, iDLG, Inverting Gradients) starts from a random dummy image and changes it until the
update it would produce matches the one received. For one small image and a fresh model this often recovers
the picture nearly pixel for pixel (PSNR above 25–30 dB).

iDLG does not even need to be told the label: with non-negative features feeding the last (fc) layer, the
true class's row of the fc weight gradient is the only negative one.
"""
)

st.header("3. What the pictures on 'How TIP works' show")
st.markdown(
    """
* **Grad-CAM α**: for each output channel k of a conv layer, α_k is the spatial mean of ∂(true-class logit) /
  ∂(channel k's output map). It is signed. Large α means the channel pushes the true class up: it carries the
  image's semantics. The **heatmap** is ReLU(Σ_k α_k · A_k), upsampled: where those channels look.
* **Kernel spectrum**: each kernel slice W[c, i] (e.g. 3 × 3 or 5 × 5) has a 2D DFT. Centred, DC (the mean of
  the kernel) sits in the middle and frequency grows outwards. Low frequencies are smooth, blurry structure;
  high frequencies are edges and fine detail, which inversion attacks need to rebuild a sharp image.
"""
)

st.header("4. What TIP does")
st.markdown(
    """
For one private sample per distinct label (n_cam samples):

1. compute α for every conv layer on the client's model;
2. in each layer, select the k = max(1, floor(p · C_out)) channels with the largest α;
3. for each selected output channel c, add noise ΔW = β · Re(IDFT(M_r ⊙ DFT(Z))) with Z ~ N(0, I): white noise
   projected onto the spectrum bins at radius ≥ r · min(kH, kW)/2 from DC;
4. calibrate β from (ε, δ): σ is the classic Gaussian-mechanism scale of the round (FedAvg:
   σ = T·η·(C/B)·sqrt(2 ln(1.25/δ))/ε; FedSGD: (C/B)·sqrt(2 ln(1.25/δ))/ε in gradient units), then
   β = σ / n_cam / L, or set β directly.

For a 3 × 3 kernel at r = 0.5 the noise touches 8 of 9 bins, everything but DC: every kernel's **mean weight is
preserved exactly**. The hope: attacks lose the fine detail of the channels that matter most, while the low
frequencies that accuracy depends on survive.
"""
)

st.header("5. What TIP does **not** guarantee")
st.warning(
    """
**TIP is a heuristic, not (ε, δ)-differential privacy.** ε only sets a noise scale. Compared with a
DP mechanism at the same ε:

* noise reaches only **k of C_out channels** per layer (90% of channels are sent clean at p = 0.1);
* **σ is split** over the L layers and the n_cam samples (β = σ / n_cam / L), so each noised weight gets far
  less noise than DP would put on it;
* the **DC and low-frequency bins are exempt**: for 3 × 3 kernels at r = 0.5 every kernel's mean is shared exactly;
* **BatchNorm** parameters and statistics, the **fc layer**, all **biases** and **1 × 1 kernels** (at r = 0.5)
  get no noise at all;
* the classic bound behind σ = Δ·sqrt(2 ln(1.25/δ))/ε is proven only for ε < 1; the paper uses ε = 5.
"""
)
st.markdown(
    """
Concretely, an adaptive attacker can:

* **still infer the label**: the fc layer is untouched, so iDLG's label rule works exactly as without a defense
  (and for one image and one step, an fc weight-gradient row divided by its bias gradient gives the
  penultimate features exactly);
* **match only the clean parts**: drop the noised channels (they stand out by their high-frequency energy) or
  match only the low-frequency bins (the explorer's *drop* and *lowpass* attackers);
* **read the selection itself**: which channels are noised depends on the private image.

So read the reconstructions on this site as "what these particular attacks achieve against this update",
not as a privacy guarantee. For a guarantee, use DP with an accountant, and pay for it in accuracy, as the
frontier page shows.
"""
)
st.markdown("**Measured, not hypothetical**: the same TIP update, attacked by the naive iDLG and by the "
            "strongest of the adaptive iDLG attackers, named under its picture (live attack: *Attacker knows the "
            "defense*).")
panels.tip_vs_adaptive(panels.punchline(), key="teach", show_channels=False)

st.header("6. How to read the numbers")
st.markdown(
    """
* **PSNR** (dB, data range 1, per image): above ~25 dB the reconstruction is plainly recognisable; below
  ~12 dB it is mostly noise.
* **SSIM**: 1 identical, near 0 unrelated structure.
* **Label**: whether the attacker's inferred label equals the true one.
* All defenses of a comparison run with the same seed (same model, same attack starting guess) and the same
  (ε, δ); the paper's DP baseline adds the same σ that TIP concentrates on a few channels to every parameter.
"""
)
st.caption("Source: TIP (Wang and Su, arXiv 2602.11633) and the project's specification of it.")
