"""What leaks: the update the server receives, before and after the defense.

Per conv layer, the energy of each output channel's kernel gradient as the client computed it, as the server
receives it, and their difference (exactly zero on every channel the defense left alone); then the fc layer's
gradient rows, whose signs give iDLG the label. The numbers come from ``TipExplainer.leaks`` (cached with the
"How TIP works" preview, so the same sliders drive both pages); this page only draws them.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import panels, resources, state, tip_setting
from app.components import channel_energy_map, defense_label, fc_rows_figure, layer_energy_figure

resources.configure_threads()
s = state.current()

st.title("What leaks: the update the server receives")
st.markdown(
    "A client sends its update, not its image, but gradient inversion rebuilds the image from the update. "
    "Here is that update before and after the defense: which parts TIP changes, and which it sends **exactly** "
    "as the client computed them."
)
for problem in state.url_problems():
    st.warning(problem)

# ------------------------------------------------------------------------------------------ controls
variant = tip_setting.tip_controls()
image = tip_setting.sidebar_image(s)
setting = tip_setting.explained(s, image)
rd, num_classes = setting.round, setting.num_classes
try:
    leaks = resources.leak_view(setting.key, setting.options, s.tip_variant, _explainer=setting.explainer,
                                _preview=setting.preview)
except ValueError as exc:
    st.error(f"Cannot explain this setting: {exc}")
    st.stop()

convs = list(leaks.convs)
changed = sum(int(np.count_nonzero(c.difference)) for c in convs)
total = sum(int(c.difference.size) for c in convs)
units = "gradient units" if rd["mode"] == "fedsgd" else "gradient units (θ_g − θ divided by T·η)"

# ------------------------------------------------------------------------------------------ conv layers
st.subheader("Conv layers: only the selected channels change")
m = st.columns(4)
m[0].metric("Channels changed", f"{changed}/{total}",
            help="Output channels whose kernel gradient differs from what the client computed, in any bin.")
m[1].metric("Channels sent exactly", f"{total - changed}/{total}",
            help="Output channels the server receives bit for bit as the client computed them.")
m[2].metric("Conv layers", f"{len(convs)}")
m[3].metric("Defense", defense_label(s.tip_variant))
st.plotly_chart(channel_energy_map([c.layer for c in convs], [c.clean for c in convs],
                                   [c.defended for c in convs], [c.difference for c in convs]), key="leak_map")
st.caption(
    f"Each cell: Σ g², the squared kernel gradient of one output channel summed over its input channels and "
    f"kernel bins ({units}); one log colour scale for all three panels. Grey cells on the right: difference "
    "exactly zero, the channel is sent as computed. Blank: no energy (a channel the image did not activate) or "
    "past the layer's last channel."
)

names = [c.layer for c in convs]
layer_name = state.bind(st.selectbox, "Conv layer", "layer", options=names, fallback=names[0],
                        help="One layer's channels in detail.")
conv = convs[names.index(layer_name)]
st.plotly_chart(layer_energy_figure(conv.layer, conv.clean, conv.defended, conv.selected), key="leak_layer")
noised_here = [int(c) for c in np.flatnonzero(conv.difference)]
untouched = [c for c in conv.selected if c not in noised_here]
spotting = (
    " Its noise covers every frequency bin, so the changed kernels are not rougher than clean ones and are hard "
    "to spot." if variant == "tip_fullband" else
    " An attacker who knows TIP can spot the changed ones by their rough, high-frequency kernels and match the rest."
)
st.markdown(
    f"**{conv.layer}**: {len(noised_here)} of {conv.difference.size} channels changed "
    f"({', '.join(map(str, noised_here)) or 'none'}); the defense selected "
    f"{', '.join(map(str, conv.selected)) or 'none'}"
    + (" (a kernel with no frequency bin beyond the cutoff, such as a 1 × 1 kernel, gets no noise)"
       if untouched else "")
    + ". Every other channel reaches the server unchanged." + spotting
)

# ------------------------------------------------------------------------------------------ fc layer
st.subheader("The fc layer: the label, in the signs")
fc = leaks.fc
if fc is None:
    st.info("This model has no fc layer to read a label from.")
else:
    class_names = [resources.class_name(image.dataset, num_classes, i) for i in range(len(fc.row_sums))]
    st.plotly_chart(fc_rows_figure(fc.rows, fc.row_sums, fc.true_label, fc.inferred_label, class_names),
                    key="leak_fc")
    f = st.columns(3)
    f[0].metric("True label", class_names[fc.true_label] if fc.true_label < len(class_names) else fc.true_label)
    f[1].metric("iDLG infers", class_names[fc.inferred_label])
    f[2].metric("Largest change to fc", "0: sent exactly" if fc.max_change == 0 else f"{fc.max_change:.3g}",
                help="max |received − computed| over the fc weight gradient.")
    st.markdown(
        "The features entering fc are non-negative (after a sigmoid or ReLU), so for one image the gradient "
        "of row c is (softmax_c − 1[c = y]) times those features: "
    )
    panels.formula(r"\frac{\partial L}{\partial W_{c,i}} = \big(p_c - \mathbb{1}[c = y]\big)\, h_i,\qquad h_i \ge 0"
                   r"\quad\Rightarrow\quad \hat y = \arg\min_c \sum_i \frac{\partial L}{\partial W_{c,i}}")
    st.markdown(
        "Only the true class's row is negative. TIP adds noise to conv kernels only, so this row reaches the "
        "server as computed and iDLG reads the label under every TIP setting."
        + ("" if fc.inferred_label == fc.true_label else
           " Here the rule misses: with FedAvg's several steps or a batch, the signs are no longer that clean.")
    )
st.page_link("views/tip.py", label="How TIP picks these channels: How TIP works", icon=":material/tune:")
