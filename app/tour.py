"""The Teach page's guided tour: each step sets the sidebar through the app's own settings (``state.apply``,
mirrored in the URL by the page it opens) and says what to look for there.

Every step starts from the class-demo preset (LeNet, FedSGD on the CIFAR-10 cat, clip 5, iDLG for 50 steps,
ε = 5) and changes only what it is about, so the steps can be taken in any order and give the same view.
The PSNRs the steps quote were measured at these settings by `python bench/tour_numbers.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from app import state
from app.components import attacker_style  # the charts' own line styles: the text cannot contradict them

# The pages a step may open, as app/main.py registers them, with a short name for the step's button.
PAGES = {
    "views/live.py": "Live attack",
    "views/leaks.py": "What leaks",
    "views/tip.py": "How TIP works",
    "views/frontier.py": "Frontier",
}

# What every step starts from: the class-demo preset on the punchline image (the CIFAR-10 cat), naive iDLG,
# TIP at the paper's settings.
BASE: dict[str, Any] = dict(
    source="gallery", dataset="cifar10", image_id="cifar10-00", tip_variant="tip", ratio=0.1, cutoff=0.5,
    noise="calibrated", epsilon=5.0, delta=1e-5, attack="idlg", adaptive="none", seed=0, labels_known=False,
    layer="", channel=-1,
)


@dataclass(frozen=True)
class TourStep:
    title: str
    page: str  # one of PAGES
    settings: Mapping[str, Any]  # changes on top of the demo preset and BASE
    look_for: str  # markdown
    formula: str  # LaTeX, rendered with st.latex
    formula_note: str = ""

    def __post_init__(self) -> None:
        if self.page not in PAGES:
            raise ValueError(f"tour step '{self.title}': unknown page '{self.page}'")
        known = {f.name for f in fields(state.Settings)}
        unknown = sorted(set(self.settings) - known)
        if unknown:
            raise ValueError(f"tour step '{self.title}': unknown settings {', '.join(unknown)}")

    def values(self) -> dict[str, Any]:
        """Every setting this step applies: the demo preset, then BASE, then the step's own changes."""
        preset = dict(state.presets()["demo"][1])
        return {"preset": "demo", **preset, **BASE, **dict(self.settings)}


STEPS: tuple[TourStep, ...] = (
    TourStep(
        title="No defense: iDLG rebuilds the image",
        page="views/live.py",
        settings=dict(defenses=("none",)),
        look_for="Press **Run attack**. Within a few seconds the reconstruction matches the private cat nearly "
                 "pixel for pixel (PSNR about 30 dB) and the label is right: the attacker was not told it.",
        formula=r"\hat x = \arg\min_{x}\ \big\| \nabla_\theta L\big(f_\theta(x), \hat y\big) - g \big\|_2^2",
        formula_note="The attacker changes a dummy image x until its gradient matches the update g it received.",
    ),
    TourStep(
        title="TIP at p = 0.1 stops the naive attacker",
        page="views/live.py",
        settings=dict(defenses=("none", "tip")),
        look_for="Run again: next to the clean reconstruction, TIP's is noise (about 5 dB, below a random "
                 "image's 8 dB), though the label is still right.",
        formula=r"\Delta W_c = \beta\,\mathrm{Re}\,\mathcal{F}^{-1}\!\big(M_r \odot \mathcal{F}(Z)\big),\quad "
                r"Z \sim \mathcal{N}(0, I),\quad \beta = \frac{\sigma}{n_{\mathrm{cam}}\, L}",
        formula_note="High-frequency noise (mask M_r) on the kernels of the selected channels c only.",
    ),
    TourStep(
        title="What leaks: a few channels noised, the rest sent exactly",
        page="views/leaks.py",
        settings=dict(defenses=("none", "tip")),
        look_for="In the difference panel only one channel per LeNet layer is coloured; every grey cell is "
                 "sent bit for bit. In the fc rows the cat's row sum is the only negative one, so iDLG reads "
                 "the label. Move **p** and watch the coloured cells grow.",
        formula=r"k = \max\!\big(1, \lfloor p \cdot C_{\mathrm{out}} \rfloor\big),\qquad "
                r"\hat y = \arg\min_c \sum_i \frac{\partial L}{\partial W_{c,i}}",
        formula_note="k of C_out channels per conv layer are noised; the fc layer is never touched.",
    ),
    TourStep(
        title="An attacker who knows TIP gets the image back",
        page="views/live.py",
        settings=dict(defenses=("tip",), adaptive="drop"),
        look_for="Run the attacker that **drops the noised channels**: it finds them from the update alone "
                 "(their kernels are almost all high frequency) and matches the rest. The cat comes back "
                 "(about 28 dB), and the detection table shows which channels it found.",
        formula=r"\rho_c = \frac{E_{\mathrm{hf}}(g_c)}{E_{\mathrm{lf}}(g_c)}\ \gg\ \rho_{\text{clean}}"
                r"\quad\Rightarrow\ \text{leave channel } c \text{ out of } \big\|\nabla_\theta L - g\big\|^2",
        formula_note="A noised channel's high- to low-frequency energy ratio stands out by orders of magnitude.",
    ),
    TourStep(
        title="Noise more channels: p = 0.6",
        page="views/live.py",
        settings=dict(defenses=("tip",), ratio=0.6, adaptive="drop"),
        look_for="With 7 of LeNet's 12 channels per layer noised, too little of the update is left clean for "
                 "the adaptive attacker to match: it still finds every noised channel, but its PSNR falls to "
                 "about 7 dB, near the noise floor.",
        formula=r"\text{clean fraction per layer} = 1 - \frac{k}{C_{\mathrm{out}}} = 1 - \frac{7}{12}",
    ),
    TourStep(
        title="Privacy against utility",
        page="views/frontier.py",
        settings=dict(defenses=("none", "dp_paper", "tip")),
        look_for="Each curve is one defense over decades of strength, for the naive "
                 f"({attacker_style('naive')}) and the adaptive ({attacker_style('adaptive')}) attacker. Look for "
                 "settings that keep both attackers low **and** the accuracy high.",
        formula=r"\mathrm{PSNR} = 10 \log_{10} \frac{1}{\mathrm{MSE}(x, \hat x)}\ \text{dB}",
        formula_note="Above about 25 dB a reconstruction is plainly recognisable; below about 12 dB it is noise.",
    ),
    TourStep(
        title="Differential privacy for comparison",
        page="views/live.py",
        settings=dict(defenses=("tip", "dp_paper"), adaptive="drop"),
        look_for="The paper's DP adds noise to **every** parameter, the fc layer included: neither attacker "
                 "recovers anything (there is no clean part to match), and on this image even the label comes "
                 "out wrong. Its price is accuracy: compare both on the frontier page.",
        formula=r"\sigma = \frac{\Delta \sqrt{2 \ln(1.25/\delta)}}{\varepsilon}\ \text{on every parameter,}\quad "
                r"\text{TIP: } \frac{\sigma}{n_{\mathrm{cam}} L} \text{ on } k \text{ of } C_{\mathrm{out}}"
                r" \text{ channels}",
    ),
)


def apply(step: TourStep) -> None:
    """Set the sidebar to this step (the Teach page then opens the step's page with them in its URL)."""
    state.apply(**step.values())
