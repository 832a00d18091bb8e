"""The "How TIP works" page's reconstruction panel: what the server rebuilds at the sliders' setting.

On a point of the precomputed grid (``python -m tipcore showcase tip-grid``) the naive attacker's and the best
adaptive attacker's reconstructions and PSNR (the highest of the grid's adaptive attackers at that point, named)
are read from disk, with no attack run; off the grid the panel says why and offers to run the setting on the
Live attack page, the adaptive run with the attacker that is the best at the most grid points.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from app import controls, resources, state
from app.components import adaptive_labels, attacker_name, defense_label, fmt_db, split_attack, upscale

LIVE_PAGE = "views/live.py"
RUN_ITERATIONS = 100  # the grid's L-BFGS steps, so a run on Live is comparable with the grid


def _run_on_live(variant: str, adaptive: str) -> None:
    """Make the Live page attack this TIP setting (the sliders' p, r, noise are shared settings already)."""
    state.apply(defenses=(variant,), attack="idlg", adaptive=adaptive, iterations=RUN_ITERATIONS)


def _query(s: state.Settings, image: controls.ImageChoice) -> Any:
    from tipcore.explorer.tip_grid import GridQuery

    return GridQuery(image_id=image.gallery_id, model=s.model, weights=s.weights, round=controls.round_dict(s),
                     seed=int(s.seed), variant=s.tip_variant, noise=s.noise, epsilon=float(s.epsilon),
                     delta=float(s.delta), ratio=float(s.ratio), cutoff=float(s.cutoff))


def _best_of(match: Any) -> str:
    n = len(match.candidates)
    return f"best of {n} adaptive attackers" if n > 1 else "the one adaptive attacker on the grid"


def _picture(title: str, cell: Any, caption: str) -> None:
    st.markdown(f"**{title}**")
    st.image(upscale(np.asarray(cell.image), 3), width=96)
    st.metric("PSNR (dB)", fmt_db(float(cell.psnr)), help="Above ~25 dB the image is plainly recognisable.")
    st.caption(caption)


def summary(s: state.Settings, image: controls.ImageChoice) -> None:
    """One line right under the sliders, so the attackers' answer to a slider move is in view without
    pushing the spectrum below the fold; the pictures follow further down (``reconstructions``)."""
    try:
        grid = resources.tip_grid()
    except ValueError:
        return  # the panel below says what is wrong
    if grid is None:
        return
    match, _ = grid.find(_query(s, image))
    if match is None:
        st.caption("The attackers at this setting: off the precomputed grid (see below to run it).")
        return
    naive, adaptive, none = (fmt_db(float(c.psnr)) for c in (match.naive, match.adaptive, match.undefended[0]))
    st.markdown(f"**The attackers at this setting** (precomputed, pictures below): naive iDLG **{naive} dB** · "
                f"{attacker_name(match.adaptive.attack)} ({_best_of(match)}) **{adaptive} dB** · "
                f"no defense {none} dB")


def reconstructions(s: state.Settings, image: controls.ImageChoice) -> None:
    """The panel with the pictures (under the spectrum)."""
    with st.container(border=True):
        try:
            grid = resources.tip_grid()
        except ValueError as exc:
            st.warning(f"The precomputed reconstructions cannot be read: {exc}")
            return
        if grid is None:
            from tipcore.explorer.tip_grid import TIP_GRID_COMMAND

            st.caption(f"Precomputed reconstructions are not built yet: `{TIP_GRID_COMMAND}`.")
            return
        match, reason = grid.find(_query(s, image))
        if match is None:
            _off_grid(s, reason, grid, image.gallery_id)
        else:
            _on_grid(match, grid)


def _on_grid(match: Any, grid: Any) -> None:
    steps = grid.settings["iterations"]
    cols = st.columns([1, 1, 1, 1.6], gap="small")
    with cols[0]:
        _picture("No defense", match.undefended[0], "naive iDLG, for reference")
    with cols[1]:
        _picture("TIP vs naive iDLG", match.naive, "matches the whole update, noise included")
    with cols[2]:
        found = ""
        if match.adaptive.flag_precision is not None:
            found = (f"; found the noised channels with precision {match.adaptive.flag_precision:.2f}, "
                     f"recall {match.adaptive.flag_recall:.2f}")
        _picture("TIP vs the best adaptive iDLG", match.adaptive,
                 f"{attacker_name(match.adaptive.attack)}, {_best_of(match)} at this setting" + found)
    with cols[3]:
        same = "" if match.exact else (
            f" These sliders give the same defense as the grid's p = {match.ratio:g}, r = {match.cutoff:g} (TIP "
            f"noises {_channels_line(match.channels, grid)} and the same frequency bins), so its reconstruction "
            "is exactly this setting's.")
        st.markdown(
            f"**Precomputed at this setting**, no attack run: {_model_line(grid)}, {steps} L-BFGS steps, "
            f"ε = {match.epsilon:g}." + same)
        st.caption(f"Made by `{grid.command}`; the grid holds {_points_line(grid)}.")


def _channels_line(channels: tuple[int, ...], grid: Any) -> str:
    sizes = [int(layer["out_channels"]) for layer in grid.layers]
    if len(set(channels)) == 1 and len(set(sizes)) == 1:
        return f"k = {channels[0]} of {sizes[0]} channels per layer"
    return "k = " + ", ".join(f"{k} of {c}" for k, c in zip(channels, sizes)) + " channels in its conv layers"


def _model_line(grid: Any) -> str:
    s = grid.settings
    return f"LeNet ({s['weights']} init), FedSGD on one image, clip {s['round']['clip']:g}, seed {s['seed']}"


def _points_line(grid: Any) -> str:
    """The grid's points: as p x r x ε when they are every combination of their values, else one by one."""
    points = {tuple(float(v) for v in point) for point in grid.settings["points"]}
    axes = [sorted({point[i] for point in points}) for i in range(3)]
    if len(points) == len(axes[0]) * len(axes[1]) * len(axes[2]):
        return " × ".join(f"{name} ∈ {{{', '.join(f'{v:g}' for v in values)}}}"
                          for name, values in zip(("p", "r", "ε"), axes))
    return "; ".join(f"p = {p:g}, r = {r:g}, ε = {e:g}" for p, r, e in sorted(points))


def _off_grid(s: state.Settings, reason: str, grid: Any, image_id: str | None) -> None:
    st.markdown(f"**Off the precomputed grid**: {reason}. Run this setting on the Live attack page "
                f"({RUN_ITERATIONS} iDLG steps against {defense_label(s.tip_variant)} with these sliders):")
    st.caption(f"The grid ({_model_line(grid)}, gallery image{'s' if len(grid.images) > 1 else ''} "
               f"{', '.join(grid.images)}, δ = {grid.settings['delta']:.0e}) holds {_points_line(grid)}.")
    # The grid's best adaptive attacker varies by point: run the one that is the best at the most of this
    # image's points (of every image's for an image the grid does not hold).
    strongest = grid.strongest_adaptive(image_id if image_id in grid.images else None)
    knowledge = split_attack(strongest)[1]
    c_naive, c_adaptive, _ = st.columns([1, 1, 2])
    go = c_naive.button("Run it: naive iDLG", key="grid_run_naive", on_click=_run_on_live,
                        args=(s.tip_variant, "none"), help="Opens Live attack with these settings, ready to run.")
    go = c_adaptive.button("Run it: adaptive iDLG", key="grid_run_adaptive", on_click=_run_on_live,
                           args=(s.tip_variant, knowledge),
                           help=f"{attacker_name(strongest)} ({adaptive_labels().get(knowledge, knowledge)}), the "
                                "best adaptive attacker at the most points of the grid; opens Live attack.") or go
    if go:
        st.switch_page(LIVE_PAGE)
