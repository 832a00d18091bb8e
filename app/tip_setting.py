"""What the TIP pages ("How TIP works", "What leaks") share: TIP's controls above the views, the sidebar,
the image checks, and the cached Grad-CAM explainer with its preview for the current sliders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from app import controls, resources, state


def tip_controls() -> str:
    """Variant, p, r and noise in one row above the page's views (so a slider's effect is in sight);
    returns the chosen variant."""
    c_variant, c_ratio, c_cutoff, c_noise = st.columns([1.1, 1, 1, 1.2], gap="medium")
    variant = controls.tip_variant_picker(c_variant)
    controls.ratio_slider(c_ratio)
    controls.cutoff_slider(c_cutoff, [variant])
    controls.noise_picker(c_noise)
    return variant


def sidebar_image(s: state.Settings) -> controls.ImageChoice:
    """The sidebar (image, model, round, TIP's budget); stops the page with a message when the image or the
    round cannot be explained."""
    image = controls.image_picker()
    controls.model_picker()
    controls.round_picker(calibrated=[s.tip_variant])
    if s.noise == "calibrated":
        st.sidebar.subheader("TIP's budget")
        controls.budget_picker()
    state.publish()
    if image is None:
        if controls.upload_error():
            st.error(controls.upload_error())
        st.info("Choose a gallery image or upload one in the sidebar.")
        controls.gallery_browser()
        st.stop()
    problem = controls.image_problem(s, image) or controls.clip_problem(s, [s.tip_variant])
    if problem:
        st.error(problem)
        st.stop()
    return image


@dataclass(frozen=True)
class Explained:
    key: tuple  # (model, weights, image, label, classes, round...): what Grad-CAM depends on
    options: tuple  # TIP's options for the sliders, sorted items (the preview's cache key)
    round: dict[str, Any]
    num_classes: int
    explainer: Any
    preview: Any


def explained(s: state.Settings, image: controls.ImageChoice) -> Explained:
    """Grad-CAM for this image and round (cached) and TIP's selection and noise for the sliders (cached);
    stops the page with the engine's message when the setting cannot be explained."""
    rd = controls.round_dict(s)
    num_classes = controls.model_classes(s, image)
    key = (s.model, s.weights, image.key, int(image.label), num_classes, rd["mode"],
           rd["local_steps"], rd["lr"], rd["clip"], int(s.seed))
    try:
        explainer = resources.explainer(*key, _image=image.image)
        options = tuple(sorted(controls.tip_options(s).items()))
        preview = resources.tip_preview(key, options, s.tip_variant, _explainer=explainer)
    except ValueError as exc:
        st.error(f"Cannot explain this setting: {exc}")
        st.stop()
    return Explained(key, options, rd, num_classes, explainer, preview)
