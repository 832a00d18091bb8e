"""Sidebar controls shared by the pages, each bound to a ``state.Settings`` field, and the plain values
the pages build engine configs from. Every widget has help text; choices come from tipcore's registries.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import streamlit as st

from app import resources, state
from app.components import ATTACK_LABELS, MODEL_LABELS, adaptive_labels, defense_label, fmt_seconds

log = logging.getLogger(__name__)

UPLOAD_TYPES = ["png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff"]
DELTAS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
TIP_FAMILY = state.TIP_FAMILY
MAX_ITERATIONS = 5000
LBFGS_ATTACKS = ("dlg", "idlg")
LBFGS_EVALS_PER_STEP = 20  # DLGConfig.evals_per_step default: closure evaluations per L-BFGS step
SOTERIA_RESNET_SECONDS = 10.0
# Before this server has finished a job: a quiet 2-core machine's worker start (a fresh interpreter importing
# torch and the engine) and client round + defense per defense; replaced by measured values after one job.
WORKER_START_S = 4.0
PREPARE_S = 0.5


@dataclass(frozen=True)
class ImageChoice:
    key: str  # a gallery id, or "upload:<sha1>" (identifies the image for caches)
    image: np.ndarray  # (32, 32, 3) float32 in [0, 1]
    label: int
    dataset: str  # gallery dataset, or "upload"
    num_classes: int  # of the gallery sample's label space (10 for uploads)
    caption: str
    gallery_id: str | None  # None for uploads


# ------------------------------------------------------------------------------------------ presets


def _on_preset() -> None:
    state.apply_preset(st.session_state[state.widget_key("preset")])


def preset_picker() -> Any:
    """The preset selectbox; returns a placeholder for the 'modified' note (filled by ``preset_note``)."""
    sb = st.sidebar
    state.bind(
        sb.selectbox, "Preset", "preset", options=list(state.presets()), format_func=lambda k: state.presets()[k][0],
        on_change=_on_preset,
        help="Start from a ready-made setting. **Class demo**: the DLG paper's LeNet attacked with iDLG in a "
             "few seconds. **Paper setting**: the TIP paper's attack study (CIFAR ResNet-18, one FedAvg update "
             "of 4 local steps, clip 5, Inverting Gradients), with far fewer attack iterations than the paper's "
             "10,000 so it finishes in minutes on a CPU. **Custom**: keep what you set.",
    )
    return sb.empty()


def preset_note(slot: Any) -> None:
    s = state.current()
    values = state.presets().get(s.preset, ("", {}))[1]
    changed = [k for k, v in values.items() if getattr(s, k) != v]
    if changed:
        slot.caption(f"Modified from the preset: {', '.join(changed)}.")
    else:
        slot.empty()


# ------------------------------------------------------------------------------------------ image


def _on_pick(sample_id: str, dataset: str) -> None:
    state.apply(source="gallery", dataset=dataset, image_id=sample_id)


def image_picker() -> ImageChoice | None:
    """Gallery image or upload, in the sidebar. Returns None when no usable image is chosen."""
    sb = st.sidebar
    sb.subheader("Private image")
    source = state.bind(
        sb.radio, "Source", "source", options=["gallery", "upload"], horizontal=True,
        format_func=lambda v: {"gallery": "Gallery", "upload": "Upload"}[v],
        help="The client's private training image. The gallery holds bundled CIFAR-10/100, MNIST, "
             "Fashion-MNIST samples and a few public-domain photos; an upload is centre-cropped and resized "
             "to 32 × 32 and never leaves this server session.",
    )
    if source == "upload":
        return _upload_picker(sb)
    names = resources.datasets()
    s = state.current()
    item = resources.gallery_item(s.image_id)
    if item is not None and item.dataset != s.dataset and state.widget_key("dataset") not in st.session_state:
        s.dataset = item.dataset  # a link that names only the image: show its set
    dataset = state.bind(
        sb.selectbox, "Dataset", "dataset", options=names, format_func=lambda d: resources.DATASET_NAMES.get(d, d),
        help="Which bundled set to pick the image from (test-set samples; see assets/samples/README.md for "
             "sources and licences).",
    )
    items = [i for i in resources.gallery() if i.dataset == dataset]
    by_id = {i.id: i for i in items}
    sample_id = state.bind(
        sb.selectbox, "Image", "image_id", options=[i.id for i in items],
        format_func=lambda i: f"{i} · {by_id[i].class_name}" if i in by_id else i,
        help="The image the client trains on. Its label is the true class; browse thumbnails with "
             "'Browse the gallery' on the page.",
    )
    item = by_id[sample_id]
    sb.image(resources.thumbnail_png(item.id, 3), caption=f"label {item.label}", width=96)
    return ImageChoice(item.id, resources.sample_image(item.id), item.label, item.dataset, item.num_classes,
                       f"{item.id} · {item.class_name} (label {item.label})", item.id)


def _upload_picker(sb: Any) -> ImageChoice | None:
    from tipcore.federation import data

    uploaded = sb.file_uploader(
        "Upload an image", type=UPLOAD_TYPES, key="uploader",
        help="PNG, JPEG, GIF, BMP, WebP or TIFF up to 20 MB, at least 8 × 8 pixels. It is centre-cropped to a "
             "square and resized to 32 × 32 (the models' input size). Kept only in this browser session.",
    )
    label = state.bind(
        sb.number_input, "Label of the upload (0–9)", "upload_label", min_value=0, max_value=9, step=1,
        valid=lambda v: 0 <= v <= 9,
        help="The true class the client trains with, in a 10-class model. CIFAR-10 order: 0 airplane, "
             "1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog, 7 horse, 8 ship, 9 truck.",
    )
    if uploaded is not None:
        raw = uploaded.getvalue()
        digest = hashlib.sha1(raw).hexdigest()[:16]
        if st.session_state.get("upload_digest") != digest:
            st.session_state["upload_digest"] = digest
            st.session_state.pop("upload", None)
            st.session_state.pop("upload_error", None)
            try:
                array = data.load_image(raw)
            except (data.ImageError, ValueError) as exc:
                st.session_state["upload_error"] = f"Could not use '{uploaded.name}': {exc}"
            except Exception as exc:  # noqa: BLE001 - any decoder failure is the upload's fault, not a crash
                log.exception("decoding an upload failed")
                st.session_state["upload_error"] = f"Could not use '{uploaded.name}': {type(exc).__name__}"
            else:
                st.session_state["upload"] = {"name": uploaded.name, "digest": digest, "image": array}
    if st.session_state.get("upload_error"):
        return None  # the page shows the message once, where the image would be (``upload_error``)
    up = st.session_state.get("upload")
    if up is None:
        sb.info("Upload an image, or switch the source to Gallery.")
        return None
    if uploaded is None:
        sb.caption(f"Using your earlier upload '{up['name']}'.")
    from app.components import upscale

    sb.image(upscale(up["image"], 3), caption=up["name"], width=96)
    name = resources.class_name("cifar10", 10, int(label))
    return ImageChoice(f"upload:{up['digest']}", up["image"], int(label), "upload", 10,
                       f"upload '{up['name']}' (label {label}, {name} in CIFAR-10 order)", None)


def upload_error() -> str | None:
    """The message for an upload that could not be used (the page shows it where the image would be)."""
    s = state.current()
    message = st.session_state.get("upload_error") if s.source == "upload" else None
    return None if not message else f"{message.rstrip('.')}. Pick another file, or switch the source to Gallery."


def gallery_browser() -> None:
    """Thumbnails of the bundled sets with a button under each: the quickest way to pick an image.

    Drawn only while its toggle is on (85 thumbnails are not worth sending on every rerun).
    """
    s = state.current()
    if not st.toggle("Browse the gallery", key="browse_gallery",
                     help="Show thumbnails of every bundled image; click Use under one to make it the private image."):
        return
    names = resources.datasets()
    tabs = st.tabs([resources.DATASET_NAMES.get(d, d) for d in names])
    for tab, name in zip(tabs, names):
        with tab:
            items = [i for i in resources.gallery() if i.dataset == name]
            per_row = 10
            for start in range(0, len(items), per_row):
                cols = st.columns(per_row)
                for col, item in zip(cols, items[start:start + per_row]):
                    with col:
                        st.image(resources.thumbnail_png(item.id, 2), caption=item.class_name, width=64)
                        current = s.source == "gallery" and s.image_id == item.id
                        st.button("Use", key=f"pick_{item.id}", on_click=_on_pick, args=(item.id, item.dataset),
                                  help=f"{item.id}: {item.class_name}, label {item.label}. {item.source}",
                                  type="primary" if current else "secondary")


# ------------------------------------------------------------------------------------------ model and round


def model_picker() -> None:
    reg = resources.registries()
    sb = st.sidebar
    sb.subheader("Model")
    models = list(reg["models"])
    model = state.bind(
        sb.selectbox, "Architecture", "model", options=models, format_func=lambda m: MODEL_LABELS.get(m, m),
        help="The shared global model. " + " ".join(
            f"**{MODEL_LABELS.get(n, n)}**: {m['description']}." for n, m in reg["models"].items()),
    )
    weights = ["random"] + (["digits"] if reg["models"][model]["digits"] else [])
    state.bind(
        sb.selectbox, "Weights", "weights", options=weights,
        format_func=lambda w: {"random": "random init (seeded)", "digits": "trained on MNIST digits"}.get(w, w),
        help="Random initialisation from the seed (as in the DLG and TIP attack studies), or a bundled checkpoint "
             "trained on 4000 MNIST digits (10 classes). Only models with a bundled checkpoint offer it.",
    )


def round_picker(expanded: bool = False, calibrated: Sequence[str] = ()) -> None:
    """The round's settings. ``calibrated``: the defenses in use; when clipping is off but one of them is
    calibrated for the round's clip, the expander opens (the page says why it cannot run)."""
    sb = st.sidebar
    problem = clip_problem(state.current(), calibrated)
    with sb.expander("Federated round", expanded=expanded or bool(problem)):
        mode = state.bind(
            st.radio, "Protocol", "mode", options=["fedsgd", "fedavg"], horizontal=True,
            format_func=lambda m: {"fedsgd": "FedSGD", "fedavg": "FedAvg"}[m],
            help="**FedSGD**: the client sends the gradient of its batch. **FedAvg**: it takes several local SGD "
                 "steps and sends θ_global − θ_local (the TIP paper's setting). One private image (batch size 1).",
        )
        if mode == "fedsgd" and state.current().local_steps != 1:
            state.apply(local_steps=1)  # FedSGD is one gradient; the (disabled) widget below shows 1
        state.bind(
            st.number_input, "Local steps", "local_steps", min_value=1, max_value=50, step=1,
            valid=lambda v: 1 <= v <= 50, disabled=mode == "fedsgd",
            help="FedAvg only: full-batch SGD steps the client takes before sending (the paper's attack study: 4). "
                 "FedSGD is always one gradient.",
        )
        state.bind(
            st.number_input, "Learning rate η", "lr", min_value=1e-6, max_value=1.0, step=1e-4, format="%.4g",
            valid=lambda v: 1e-6 <= v <= 1.0,
            help="The client's SGD learning rate (paper: 1e-3). It scales a FedAvg update and TIP's calibrated "
                 "noise in FedAvg mode.",
        )
        state.bind(
            st.number_input, "Clip norm C (0 = off)", "clip", min_value=0.0, max_value=100.0, step=0.5,
            valid=lambda v: 0.0 <= v <= 100.0,
            help="Global L2 norm each step's gradient is clipped to (paper: 5). DP and TIP calibrate their noise "
                 "for exactly this C, so they need a clipped round: 0 (no clipping) works only with the other "
                 "defenses.",
        )


# ------------------------------------------------------------------------------------------ defenses


def defense_picker() -> tuple[str, ...]:
    reg = resources.registries()
    names = list(reg["defenses"])
    return state.bind(
        st.sidebar.multiselect, "Defenses to compare", "defenses", options=names, format_func=defense_label,
        max_selections=len(names),
        help="One attack per defense, same seed (so the same initial guess), same image and round. "
             + " ".join(f"**{defense_label(n)}**: {d['summary']}." for n, d in reg["defenses"].items()),
    )


def budget_picker(container: Any | None = None) -> None:
    c = container or st.sidebar
    state.bind(
        c.number_input, "Privacy budget ε", "epsilon", min_value=0.01, max_value=100.0, step=0.5,
        valid=lambda v: 0.01 <= v <= 100.0,
        help="Shared by every defense that takes a budget (DP, paper DP, TIP and its ablations), so they are "
             "compared at the same (ε, δ). Smaller ε means more noise. For TIP ε only sets a noise scale: TIP "
             "is not formally (ε, δ)-DP (see Teach).",
    )
    state.bind(
        c.selectbox, "δ", "delta", options=list(DELTAS), format_func=lambda d: f"{d:.0e}", fallback=1e-5,
        help="The δ of (ε, δ), shared like ε. The Gaussian factor is sqrt(2 ln(1.25/δ)) (4.84 for 1e-5).",
    )


CUTOFF_UNUSED = ("The full-band ablation noises every frequency bin, DC included, so the cutoff r does not "
                 "apply to it.")
CUTOFF_UNUSED_SHORT = "Not used: the full band noises every bin."  # under the slider; the help has the rest


def cutoff_unused(variants: Sequence[str]) -> str | None:
    """Why the cutoff slider does nothing for these TIP variants (only the full band among them), or None."""
    tips = [v for v in variants if v in TIP_FAMILY]
    return CUTOFF_UNUSED if tips and all(v == "tip_fullband" for v in tips) else None


def tip_variant_picker(container: Any | None = None) -> str:
    c = container or st.sidebar
    return state.bind(
        c.selectbox, "TIP variant", "tip_variant", options=list(TIP_FAMILY), format_func=defense_label,
        help="**TIP**: Grad-CAM's top channels, high-frequency noise. **Random channels** (ablation): the "
             "same noise on randomly chosen channels. **Full band** (ablation): the top channels, noise on "
             "every frequency bin including DC.",
    )


def ratio_slider(container: Any | None = None) -> float:
    c = container or st.sidebar
    return state.bind(
        c.slider, "Channel ratio p", "ratio", min_value=0.0, max_value=1.0, step=0.05,
        valid=lambda v: 0.0 <= v <= 1.0,
        help="Fraction of output channels per conv layer that get noise: k = max(1, floor(p · C_out)), chosen "
             "by the largest signed Grad-CAM weight α (paper: 0.1; p = 0 still noises one channel).",
    )


def cutoff_slider(container: Any | None = None, variants: Sequence[str] = ("tip",)) -> float:
    """The cutoff r; disabled, with the reason under it, when none of ``variants`` uses it."""
    c = container or st.sidebar
    unused = cutoff_unused(variants)
    value = state.bind(
        c.slider, "Frequency cutoff r", "cutoff", min_value=0.0, max_value=1.0, step=0.05,
        valid=lambda v: 0.0 <= v <= 1.0, disabled=unused is not None,
        help=unused or "Spectrum bins at radius ≥ r · min(kH, kW)/2 from DC get noise (paper: 0.5). For a 3 × 3 "
                       "kernel r = 0.5 noises all but DC, so each kernel's mean survives; r = 0 noises every bin; "
                       "r = 1 leaves a 3 × 3 kernel clean.",
    )
    if unused:
        c.caption(CUTOFF_UNUSED_SHORT)
    return value


def noise_picker(container: Any | None = None) -> str:
    c = container or st.sidebar
    noise = state.bind(
        c.radio, "Noise scale", "noise", options=["calibrated", "direct"], horizontal=True,
        format_func=lambda v: {"calibrated": "from ε", "direct": "direct β"}[v],
        help="**From ε**: β = σ / n_cam / L with σ the Gaussian-mechanism scale of the round at (ε, δ, C). "
             "**Direct β**: the per-element noise scale itself.",
    )
    if noise == "direct":
        state.bind(
            c.number_input, "β (per-element noise scale)", "beta", min_value=0.0, max_value=100.0, step=0.001,
            format="%.4g", valid=lambda v: 0.0 <= v <= 100.0,
            help="Std of the white noise before the high-pass projection; β = 0 switches the noise off.",
        )
    return noise


def tip_picker(container: Any | None = None, *, variant: bool = False, variants: Sequence[str] = ("tip",)) -> None:
    """TIP's settings in one container; ``variants``: the TIP variants in use (the cutoff is disabled when
    only the full band is among them)."""
    c = container or st.sidebar
    if variant:
        variants = (tip_variant_picker(c),)
    ratio_slider(c)
    cutoff_slider(c, variants)
    noise_picker(c)


def other_defense_picker() -> None:
    with st.sidebar.expander("Pruning and Soteria"):
        state.bind(
            st.slider, "Pruning ratio", "prune_ratio", min_value=0.0, max_value=1.0, step=0.05,
            valid=lambda v: 0.0 <= v <= 1.0,
            help="Gradient pruning: the fraction of each tensor's smallest-magnitude entries set to zero.",
        )
        state.bind(
            st.slider, "Soteria ratio", "soteria_ratio", min_value=0.0, max_value=1.0, step=0.05,
            valid=lambda v: 0.0 <= v <= 1.0,
            help="Soteria: the fraction of the fc layer's input features pruned from the update.",
        )


HAND_MADE = state.HAND_MADE  # defenses with their own widgets above


def generated_defense_pickers(names: Sequence[str]) -> None:
    """Widgets for a chosen defense this page has no hand-made controls for, one per knob its config
    declares (tipcore.common.knobs): a new defense shows up with its options and nothing here to edit.
    Their values live in ``Settings.defense_opts`` (so they survive page switches and share links)."""
    reg = resources.registries()["defenses"]
    for name in names:
        if name in HAND_MADE or name not in reg:
            continue
        with st.sidebar.expander(f"{defense_label(name)} options"):
            for k in reg[name]["knobs"]:
                if not state.generated(k):
                    continue  # the shared budget, the round's clip, and kinds no widget shows
                label, help_text = k["label"], f"{k['help']}{' ' + k['range'] if k['range'] else ''}"
                default = k["default"]
                if k["kind"] == "bool":
                    state.bind_option(st.checkbox, label, name, k["name"], default, help=help_text)
                elif k["kind"] == "choice":
                    state.bind_option(st.selectbox, label, name, k["name"], default, options=k["choices"],
                                      help=help_text)
                else:
                    number = int if k["kind"] == "int" else float
                    state.bind_option(st.number_input, label, name, k["name"], number(default), help=help_text,
                                      **number_range(k))


def number_range(k: Mapping[str, Any]) -> dict[str, Any]:
    """``min_value`` / ``max_value`` of a knob's number widget (a row of ``tipcore.common.knobs.table``): the
    knob's own range, so the widget offers no value the knob refuses. An exclusive bound becomes the first value
    inside it: the next float (``math.nextafter``), or the next integer for an integer knob."""
    out: dict[str, Any] = {}
    for bound, key, towards in (("low", "min_value", math.inf), ("high", "max_value", -math.inf)):
        value = k[bound]
        if value is None:
            continue
        if k["kind"] == "int":
            value = float(value)
            if k[f"{bound}_open"]:
                out[key] = math.floor(value) + 1 if towards > 0 else math.ceil(value) - 1
            else:
                out[key] = math.ceil(value) if towards > 0 else math.floor(value)
        else:
            out[key] = math.nextafter(float(value), towards) if k[f"{bound}_open"] else float(value)
    return out


def generated_options(s: state.Settings, name: str) -> dict[str, Any]:
    """The options of a defense drawn by ``generated_defense_pickers``, from the settings (defaults where
    the visitor changed nothing)."""
    return s.defense_opts.of(name, resources.registries()["defenses"].get(name, {}).get("knobs", []))


# ------------------------------------------------------------------------------------------ attack


ADAPTIVE_HELP = (
    "Whether the server adapts its attack to the defense, seeing only the update it received. **No**: the "
    "naive attack matches the whole update, noise included. **Drops the noised channels**: finds the conv "
    "channels that carry injected noise (TIP's noise has no low-frequency part, so their high- to "
    "low-frequency energy ratio stands out by orders of magnitude) and leaves them out of the matching. "
    "**Matches low frequencies only**: matches only the kernel frequencies TIP leaves clean, and the tensors "
    "it never touches. **Noise-aware weighting**: weights every channel by its estimated signal-to-noise, "
    "which also applies to DP and pruning. Against a defense that adds no such noise the adaptive attacks "
    "behave like the naive one."
)


def split_attack_setting(s: state.Settings) -> None:
    """A link may name the engine's variant directly (attack=idlg_drop): split it into attack + adaptive."""
    reg = resources.registries()["attacks"]
    if s.attack in reg and reg[s.attack]["base"] != s.attack:
        base = reg[s.attack]["base"]
        s.attack, s.adaptive = base, s.attack[len(base) + 1:]


def attack_name(s: state.Settings) -> str:
    """The engine's attack for these settings: the naive attack or its adaptive variant (idlg_drop)."""
    name = s.attack if s.adaptive == "none" else f"{s.attack}_{s.adaptive}"
    return name if name in resources.registries()["attacks"] else s.attack


def attack_picker() -> None:
    reg = resources.registries()
    sb = st.sidebar
    sb.subheader("Attack")
    split_attack_setting(state.current())
    attacks = reg["attacks"]
    bases = [n for n, a in attacks.items() if a["base"] == n]
    base = state.bind(
        sb.selectbox, "Attack", "attack", options=bases, format_func=lambda a: ATTACK_LABELS.get(a, a),
        help="The honest-but-curious server's reconstruction. "
             + " ".join(f"**{ATTACK_LABELS.get(n, n)}**: {attacks[n]['summary']}." for n in bases),
    )
    labels = adaptive_labels()
    modes = ["none"] + [m for m in labels if m != "none" and f"{base}_{m}" in attacks]
    state.bind(
        sb.selectbox, "Attacker knows the defense", "adaptive", options=modes, fallback="none",
        format_func=lambda m: labels.get(m, m), help=ADAPTIVE_HELP,
    )
    state.bind(
        sb.number_input, "Iterations", "iterations", min_value=1, max_value=MAX_ITERATIONS, step=10,
        valid=lambda v: 1 <= v <= MAX_ITERATIONS,
        help="Optimisation steps of the attack (DLG/iDLG: L-BFGS steps of up to 20 evaluations each; IG: Adam "
             "steps). More steps, sharper reconstructions, longer waits.",
    )
    state.bind(
        sb.number_input, "Seed", "seed", min_value=0, max_value=2**31 - 1, step=1,
        valid=lambda v: 0 <= v < 2**31,
        help="Fixes model initialisation, defense noise and the attack's initial guess. Every defense of a "
             "comparison runs with the same seed, so the attack starts from the same guess.",
    )
    state.bind(
        sb.checkbox, "Server knows the label", "labels_known",
        help="Threat model: the server is told the true label (as in the TIP paper's attack study). Otherwise "
             "iDLG and IG read it off the last layer's gradient.",
    )


# ------------------------------------------------------------------------------------------ engine configs


def round_dict(s: state.Settings) -> dict[str, Any]:
    fedsgd = s.mode == "fedsgd"
    return dict(mode=s.mode, batch_size=1, local_steps=1 if fedsgd else int(s.local_steps), lr=float(s.lr),
                clip=None if s.clip <= 0 else float(s.clip))


def defense_options(s: state.Settings, name: str) -> dict[str, Any]:
    """A defense's options from the settings. The clip is not among them: a clip-calibrated defense takes
    the round's own clip (``tipcore.defenses.bind_round``)."""
    from tipcore import defenses
    from tipcore.pipeline import experiment

    if name in TIP_FAMILY:
        opts: dict[str, Any] = dict(ratio=float(s.ratio), cutoff=float(s.cutoff), noise=s.noise)
        if s.noise == "direct":
            opts["beta"] = float(s.beta)
    elif name == "prune":
        opts = dict(ratio=float(s.prune_ratio))
    elif name == "soteria":
        opts = dict(ratio=float(s.soteria_ratio))
    elif name not in HAND_MADE:
        opts = generated_options(s, name)
    else:
        opts = {}
    if name in defenses.DEFENSES:
        opts = experiment.with_budget(name, opts, float(s.epsilon), float(s.delta))
    return opts


def calibrated_defenses(names: Sequence[str]) -> list[str]:
    """Those of ``names`` whose noise is calibrated for the round's clip norm C (DP, TIP and its ablations)."""
    reg = resources.registries()["defenses"]
    return [n for n in names if reg.get(n, {}).get("takes_clip")]


def clip_problem(s: state.Settings, names: Sequence[str]) -> str | None:
    """Why these defenses cannot run in this round (clipping off), or None."""
    needing = calibrated_defenses(names)
    if s.clip > 0 or not needing:
        return None
    which = ", ".join(defense_label(n) for n in needing)
    return (f"{which} calibrate{'s' if len(needing) == 1 else ''} the noise for updates clipped to norm C, but "
            "the round does not clip (C = 0). Set the clip norm C under Federated round (the paper uses 5)"
            + (f", or remove {'it' if len(needing) == 1 else 'them'} from the comparison."
               if len(needing) < len(names) else "."))


def tip_options(s: state.Settings) -> dict[str, Any]:
    """TIP's options for the preview, bound to the round's clip; raises ValueError (the engine's message)
    when the round cannot carry them."""
    from tipcore import defenses
    from tipcore.federation.fl import RoundConfig

    opts = defense_options(s, "tip")
    opts.setdefault("epsilon", float(s.epsilon))
    opts.setdefault("delta", float(s.delta))
    return defenses.bind_round(s.tip_variant, opts, RoundConfig(**round_dict(s)))


def model_classes(s: state.Settings, image: ImageChoice) -> int:
    return 10 if s.weights == "digits" else max(image.num_classes, 10)


def image_problem(s: state.Settings, image: ImageChoice) -> str | None:
    """Why this image cannot be used with this model, or None."""
    if s.weights == "digits" and image.num_classes != 10:
        return (f"The digits checkpoints have 10 classes, but {image.caption} comes from a "
                f"{image.num_classes}-class set: pick a 10-class image or random weights.")
    return None


def report_every(iterations: int) -> int:
    return max(1, int(iterations) // 25)


def build_plan(s: state.Settings, image: ImageChoice) -> list[tuple[str, Any]]:
    """One RunSpec per defense; raises ValueError (with the engine's message) on a bad value."""
    from tipcore.pipeline import experiment
    from tipcore.federation.fl import RoundConfig
    from tipcore.pipeline.runspec import pixel_digest

    if not s.defenses:
        raise ValueError("pick at least one defense to compare")
    problem = image_problem(s, image) or clip_problem(s, s.defenses)
    if problem:
        raise ValueError(problem)
    round_cfg = RoundConfig(**round_dict(s))
    upload = None if image.gallery_id else pixel_digest(image.image)  # an upload is named by its pixels
    plan = []
    for name in s.defenses:
        cfg = experiment.RunSpec(
            seed=int(s.seed), model=s.model, weights=s.weights,
            image_ids=(image.gallery_id,) if image.gallery_id else (), upload_sha256=upload,
            labels=None if image.gallery_id else (int(image.label),),
            num_classes=None, round=round_cfg, defense=name, defense_cfg=defense_options(s, name),
            attack=attack_name(s), attack_cfg={"iterations": int(s.iterations)}, labels_known=bool(s.labels_known),
            report_every=report_every(s.iterations),
        )
        plan.append((name, cfg))
    return plan


def step_seconds(s: state.Settings) -> tuple[float, bool]:
    """(seconds per attack step, measured?): the median of this server's recent runs of the same model and
    attack when there are some (they include the machine's load), else ModelSpec.cpu_attack_ms."""
    measured = resources.throughput().seconds_per_step(s.model, attack_name(s))
    if measured is not None:
        return measured, True
    reg = resources.registries()
    ms = float(reg["models"][s.model]["cpu_attack_ms"])
    if s.attack in LBFGS_ATTACKS:
        ms *= LBFGS_EVALS_PER_STEP  # one L-BFGS step runs up to 20 closure evaluations
    return ms / 1000.0, False


def estimate(s: state.Settings) -> tuple[float, str]:
    """(seconds, explanation) for the whole comparison, including the wait for a free attack slot."""
    per, measured = step_seconds(s)
    n = max(len(s.defenses), 1)
    total = s.iterations * per * n
    unit = "L-BFGS step (≤ 20 evaluations)" if s.attack in LBFGS_ATTACKS else "step"
    source = ("measured on this server in its recent runs" if measured
              else "a quiet machine's speed; the first run here measures the real one")
    parts = [f"{s.iterations} iterations × {n} defense{'s' if n > 1 else ''} × ~{per * 1000:.0f} ms per {unit} "
             f"on {MODEL_LABELS.get(s.model, s.model)} ({source})"]
    overhead = resources.throughput().overhead_per_defense(s.model)
    if overhead is not None:
        total += overhead * n
        parts.append(f"+ ~{fmt_seconds(overhead * n)} to start the attack worker and prepare each defense's "
                     "update (measured here)")
    else:
        total += WORKER_START_S + PREPARE_S * n
        parts.append(f"+ ~{fmt_seconds(WORKER_START_S + PREPARE_S * n)} to start the attack worker and prepare "
                     "each defense's update (a quiet machine's)")
    if "soteria" in s.defenses and s.model == "resnet18":
        total += SOTERIA_RESNET_SECONDS
        parts.append("+ ~10 s for Soteria's per-feature Jacobian on ResNet-18")
    slots = resources.attack_slots()
    if slots.active >= slots.capacity:
        wait = slots.next_free_estimate()
        total += wait or 0.0
        parts.append(f"+ {'~' + str(round(wait)) + ' s' if wait else 'an unknown time'} waiting for a free "
                     f"attack slot ({slots.active} running, {slots.waiting} queued)")
    return total, " ".join(parts)


__all__ = [
    "ImageChoice", "preset_picker", "preset_note", "image_picker", "gallery_browser", "model_picker",
    "round_picker", "defense_picker", "budget_picker", "tip_picker", "tip_variant_picker", "ratio_slider",
    "cutoff_slider", "noise_picker", "cutoff_unused", "other_defense_picker", "generated_defense_pickers",
    "attack_picker", "build_plan", "estimate", "step_seconds", "defense_options", "tip_options", "round_dict",
    "model_classes",
    "image_problem", "clip_problem", "calibrated_defenses", "attack_name", "split_attack_setting",
]
