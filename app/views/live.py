"""Live attack: one federated round, each chosen defense, the same attack; streamed, stoppable, downloadable."""

from __future__ import annotations

import io
import zipfile
from dataclasses import fields

import streamlit as st

from app import controls, jobs, resources, state
from app.components import (
    MODEL_LABELS, attack_label, comparison_png, defense_label, fmt_db, fmt_psnr, fmt_seconds, fmt_ratio,
    loss_curves, rows_of, upscale,
)

# Reconstructions per row: 4 keeps every picture and caption readable from 1 to 8 defenses.
PER_ROW = 4
RUN_KEY = "run_attack"
# A warm worker sends its first snapshot within about half a second of Run: the panel drawn right after Run
# waits that long for it rather than showing "queued" until its next poll (0.75 s later).
FIRST_SNAPSHOT_WAIT_S = 1.0

resources.configure_threads()
s = state.current()

# ------------------------------------------------------------------------------------------ sidebar
preset_slot = controls.preset_picker()
image = controls.image_picker()
controls.model_picker()
controls.round_picker(calibrated=s.defenses)
st.sidebar.subheader("Defenses")
controls.defense_picker()
controls.budget_picker()
with st.sidebar.expander("TIP settings", expanded=False):
    controls.tip_picker(st, variants=s.defenses)
controls.other_defense_picker()
controls.generated_defense_pickers(state.current().defenses)
controls.attack_picker()
controls.preset_note(preset_slot)
state.publish()


def _current_plan() -> tuple[list | None, tuple | None]:
    """The plan the sidebar describes now and its run keys (None, None when it cannot run as set)."""
    if image is None or not s.defenses:
        return None, None
    try:
        plan = controls.build_plan(s, image)
    except ValueError:
        return None, None
    return plan, jobs.plan_keys(plan, None if image.gallery_id else image.image[None])


plan_now, keys_now = _current_plan()

# ------------------------------------------------------------------------------------------ header
st.title("Live attack")
st.markdown(
    "The client computes one update on its private image; each defense transforms it; the server runs the "
    "same attack (same seed, so the same initial guess) on every defended update. Watch the reconstruction "
    "form, stop whenever you like, and download what you got."
)
for problem in state.url_problems():
    st.warning(problem)

job: jobs.Job | None = st.session_state.get("job")

# A finished job becomes plain results (numpy and bytes) in session state; the job and its tensors go.
if job is not None and job.done:
    meta = st.session_state.get("job_meta", (state.snapshot(), "", ""))
    st.session_state["results"] = jobs.collect(job, *meta)
    del st.session_state["job"]
    job = None
running = job is not None


def _start_job() -> jobs.Job | None:
    """Start the run the visitor asked for with the settings the page showed, or say why it cannot run."""
    try:
        plan = controls.build_plan(s, image)
    except ValueError as exc:
        st.error(f"Cannot run with these settings: {exc}")
        return None
    new_job = jobs.Job(plan=plan, images=None if image.gallery_id else image.image[None],
                       slots=resources.attack_slots(), iterations=int(s.iterations), cache=jobs.result_cache(),
                       throughput=resources.throughput(), keys=dict(keys_now or ()),
                       spare=resources.spare_worker())
    st.session_state["job"] = new_job
    st.session_state["job_meta"] = (state.snapshot(), image.caption, image.dataset)
    st.session_state["job_image"] = (image.caption, image.image)
    st.session_state.pop("results", None)
    jobs.watch_toolbar_stop(True, new_job)  # a toolbar Stop from now on stops this job
    return new_job.start()


# Run's click is read before the page is drawn (a keyed button's value is in session state from the start of
# the run its click triggers), so the page is drawn once, already running, instead of drawn idle and rerun.
if (st.session_state.get(RUN_KEY) and image is not None and not running and s.defenses
        and not (controls.image_problem(s, image) or controls.clip_problem(s, s.defenses))):
    job = _start_job()
    running = job is not None
if running:
    job.touch()

# While a job runs, the header describes that job (its settings and image), not what the sidebar says now.
job_settings = st.session_state.get("job_meta", (s,))[0] if running else s
job_image = st.session_state.get("job_image") if running else None
top_left, top_right = st.columns([1, 3], gap="large")
with top_left:
    if job_image is not None:
        st.image(upscale(job_image[1], 6), caption=job_image[0], width=192)
    elif image is not None:
        st.image(upscale(image.image, 6), caption=image.caption, width=192)
    elif controls.upload_error():
        st.error(controls.upload_error())
with top_right:
    h = job_settings
    seconds, how = controls.estimate(h)
    protocol = f"FedAvg, {h.local_steps} local steps" if h.mode == "fedavg" else "FedSGD"
    chosen = ", ".join(defense_label(d) for d in h.defenses) or "—"
    st.markdown(
        ("Running: " if running else "")
        + f"**{MODEL_LABELS.get(h.model, h.model)}** ({h.weights} weights) · **{protocol}** · "
        f"**{attack_label(controls.attack_name(h))}**, {h.iterations} iterations, seed {h.seed} · "
        f"defenses: {chosen} · ε = {h.epsilon:g}, δ = {h.delta:.0e}"
    )
    if running and h != s:
        st.caption("You changed settings in the sidebar: they apply to the next run.")
    if not running:  # while a run goes, its own measured time left is in the live panel below
        st.markdown(f"Estimated time: **≈ {fmt_seconds(seconds)}** on this server")
        st.caption(how + ". While it runs, the time left comes from its own measured speed.")
    if seconds > 300:
        st.warning("This will take a while. Lower the iterations or the number of defenses for a quick look; "
                   "Stop keeps whatever has been reached.")
    problem = (controls.image_problem(s, image) if image is not None else None) or controls.clip_problem(s, s.defenses)
    if problem:
        st.error(problem)
    if s.adaptive == "none" and any(d in controls.TIP_FAMILY for d in s.defenses):
        st.caption("The attacker is naive: it matches TIP's noise too. Set **Attacker knows the defense** to "
                   "*drops the noised channels* to see what an attacker who adapts to TIP gets.")
    if not s.defenses:
        st.info("Pick at least one defense in the sidebar.")
    c1, _ = st.columns([1, 1])
    c1.button(
        "Run attack", type="primary", icon=":material/play_arrow:", width="stretch", key=RUN_KEY,
        disabled=running or image is None or bool(problem) or not s.defenses,
        help="Start the comparison: one attack per defense, one after the other. One run per visitor at a time.",
    )

controls.gallery_browser()


# ------------------------------------------------------------------------------------------ live panel
@st.fragment(run_every=0.75)
def live_panel() -> None:
    job: jobs.Job | None = st.session_state.get("job")
    if job is None:
        return
    job.touch()
    if job.done:
        st.rerun()  # the whole page: collect and show the results
    job.wait_first_snapshot(FIRST_SNAPSHOT_WAIT_S)
    with jobs.stop_on_script_stop(job):  # Streamlit's toolbar Stop stops the attack too
        _live_panel_body(job)


def _live_panel_body(job: jobs.Job) -> None:
    st.subheader("Running")
    st.button("Stop", type="primary", icon=":material/stop:", on_click=job.stop, key="stop_live",
              disabled=job.stop_event.is_set(),
              help="Stop the attack now and keep what it reached; defenses not started yet are skipped.")
    frac, eta = job.progress()
    slots = resources.attack_slots()
    if job.stopping:  # asked to stop: never a progress line that reads as if it went on
        st.progress(min(max(frac, 0.0), 1.0), text="Stopping: the attack ends at its current step and the page "
                    "shows what it reached, marked as stopped; defenses not started are skipped.")
    elif job.status == "waiting":
        ahead = slots.position(job) or 0
        wait = job.wait_estimate()
        when = f"a slot should free in about {fmt_seconds(wait)}" if wait else "your run starts as soon as one finishes"
        st.progress(0, text=f"Waiting for a free attack slot: {slots.active} of {slots.capacity} running on this "
                            f"server{f', {ahead} run(s) queued ahead of yours' if ahead else ''}; {when}.")
    else:
        doing = job.activity()  # before the worker names its first defense, the line says what it waits for
        text = (f"{defense_label(job.current)}: {doing} · " if job.current else f"{doing[:1].upper()}{doing[1:]} · ")
        text += f"about {fmt_seconds(eta)} left (measured speed)" if eta is not None else "measuring the speed"
        st.progress(min(max(frac, 0.0), 1.0), text=f"{text} · {fmt_seconds(job.elapsed_s or 0)} so far")
    for row in rows_of(job.plan, PER_ROW):
        for col, (name, _) in zip(st.columns(PER_ROW), row):
            _live_cell(col, job, name)


def _live_cell(col: object, job: jobs.Job, name: str) -> None:
    """One defense's picture in the live panel: done (or from the cache), failed, the latest snapshot, or queued."""
    with col:  # type: ignore[attr-defined]
        st.markdown(f"**{defense_label(name)}**")
        rec = job.records.get(name)
        snap = job.latest.get(name)
        if rec is not None:
            st.image(upscale(rec.images[0], 5), width="stretch")
            st.caption(f"{'from the cache' if name in job.cached else 'done'} · PSNR {fmt_psnr(rec.psnr)}")
        elif name in job.errors:
            st.error(job.errors[name])
        elif snap is not None:
            st.image(upscale(snap.images[0], 5), width="stretch")
            st.caption(f"{'stopping at' if job.stopping else 'step'} {snap.step} · loss {snap.loss:.3g}")
        else:
            st.caption("skipped (stopped)" if job.stopping else "queued")


if running:
    live_panel()
else:
    resources.spare_worker().refill()  # a warm worker for this visitor's Run (a no-op when one waits)


# ------------------------------------------------------------------------------------------ results
def _zip(res: jobs.Results) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for d in res.defenses:
            for fname, payload in d.files.items():
                zf.writestr(f"{d.defense}/{fname}", payload)
        zf.writestr("metrics.csv", res.metrics_csv)
        zf.writestr("comparison.png", figure_png(res))
    return buf.getvalue()


def _label_text(res: jobs.Results, labels: tuple[int, ...]) -> str:
    ds = "cifar10" if res.dataset == "upload" else res.dataset
    return ", ".join(f"{resources.class_name(ds, res.num_classes, int(v))} ({int(v)})" for v in labels)


def _fraction(value: object) -> str:
    return "—" if value is None else f"{float(value):.2f}"


def show_analysis(analysis: dict) -> None:
    """What the defense did to the update, and (adaptive attacker) how well the noised channels were found."""
    detection = analysis.get("detection")
    if isinstance(detection, dict) and not detection.get("flagged") and not detection.get("noised"):
        st.caption("the attacker found no noised channels, and the defense noised none",
                   help="The adaptive attacker looks for conv channels whose kernels carry almost only "
                        "high-frequency energy. Without such noise it matches the whole update, like the naive one.")
    elif isinstance(detection, dict):
        d1, d2 = st.columns(2)
        d1.metric("Detection precision", _fraction(detection.get("precision")),
                  help="Of the channels the attacker flagged as noised (from the update alone), the fraction the "
                       "defense really noised (the experimenter checks against the defense's record; the attacker "
                       "never sees it). — when nothing was flagged.")
        d2.metric("Detection recall", _fraction(detection.get("recall")),
                  help="Of the channels the defense noised, the fraction the attacker flagged. — when the defense "
                       "noised no channels (e.g. DP or pruning change every tensor, not chosen channels).")
        st.caption(f"flagged {detection.get('flagged', 0)} channel(s) as noised; the defense noised "
                   f"{detection.get('noised', 0)}; {detection.get('true_positives', 0)} of them found")
    slices = float(analysis.get("perturbed_slices", 0) or 0)
    ratio = analysis.get("noise_to_signal")
    if slices > 0 and ratio is not None:
        cosine = analysis.get("update_cosine")
        st.caption(f"noise-to-signal on the {int(slices)} changed slice{'s' if slices != 1 else ''}: "
                   f"{fmt_ratio(ratio)} (median {fmt_ratio(analysis.get('noise_to_signal_median'))})"
                   + (f" · cosine to the clean update {float(cosine):.2f}" if cosine is not None else ""),
                   help="‖defended − clean‖ / ‖clean‖ over the conv channels (or whole tensors) the defense "
                        "changed: how loud the noise is where it was added. The cosine compares the whole "
                        "defended update with the clean one.")


def _notes(d: jobs.DefenseResult) -> str:
    extra = []
    if d.stopped:
        extra.append("stopped")
    if d.restarts:
        extra.append(f"{d.restarts} restart{'s' if d.restarts > 1 else ''}")
    if d.diverged:
        extra.append("diverged")
    return ", ".join(extra) or "—"


def metrics_rows(res: jobs.Results) -> list[dict[str, str]]:
    """One row per defense for the metrics table (strings, so nothing is rounded or cut by the table)."""
    rows = []
    for d in res.defenses:
        ok = d.label_pred == d.label_true
        row = {"defense": defense_label(d.defense), "PSNR (dB)": fmt_db(d.psnr), "SSIM": f"{d.ssim:.2f}",
               "label inferred": f"{_label_text(res, d.label_pred)} {'✓' if ok else '✗'}",
               "iterations": str(d.iterations), "time": fmt_seconds(d.seconds), "notes": _notes(d)}
        detection = d.analysis.get("detection")
        if isinstance(detection, dict) and (detection.get("flagged") or detection.get("noised")):
            row["noised channels found"] = (f"{detection.get('true_positives', 0)} of {detection.get('noised', 0)} "
                                            f"(precision {_fraction(detection.get('precision'))})")
        rows.append(row)
    if any("noised channels found" in r for r in rows):
        for r in rows:
            r.setdefault("noised channels found", "—")
    return rows


def figure_panels(res: jobs.Results) -> list[tuple[str, str, object]]:
    """(title, subtitle, image) for the private image and each reconstruction."""
    first = res.defenses[0]
    panels = [("Private image", f"label: {_label_text(res, first.label_true)}", res.original[0])]
    panels += [(defense_label(d.defense) + (" (stopped)" if d.stopped else ""),
                f"PSNR {fmt_psnr(d.psnr)} · SSIM {d.ssim:.2f}"
                + (f" · stopped at step {d.iterations} of {res.settings.iterations}" if d.stopped else ""),
                d.images[0])
               for d in res.defenses]
    return panels


def figure_png(res: jobs.Results) -> bytes:
    """The downloadable comparison figure, titled and with PSNR per panel (made once per result)."""
    key = ("figure_png", res.job_id)
    cache = st.session_state.setdefault("figure_png", {})
    if key not in cache:
        cache.clear()  # only the shown result's figure is kept
        cache[key] = comparison_png(figure_panels(res), per_row=PER_ROW)
    return cache[key]


def settings_line(res: jobs.Results) -> str:
    """The settings that produced ``res``, in one line."""
    cfg = res.settings
    return (
        f"{res.image_caption} · {MODEL_LABELS.get(cfg.model, cfg.model)} ({cfg.weights}) · "
        f"{'FedAvg ' + str(cfg.local_steps) + ' steps' if cfg.mode == 'fedavg' else 'FedSGD'} · "
        f"{attack_label(res.defenses[0].attack if res.defenses and res.defenses[0].attack else cfg.attack)}, "
        f"{cfg.iterations} iterations · seed {cfg.seed} · defenses: "
        f"{', '.join(defense_label(d) for d in cfg.defenses) or '—'} · ε = {cfg.epsilon:g}, δ = {cfg.delta:.0e}"
    )


# Settings that do not change a run (the view's layer and channel, the preset's name) are not "changes".
NOT_RUN_SETTINGS = {"preset", "layer", "channel"}


def changed_settings(old: state.Settings, new: state.Settings) -> list[str]:
    """'name: old → new' for each run setting that differs."""
    out = []
    for f in fields(new):
        if f.name in NOT_RUN_SETTINGS:
            continue
        a, b = getattr(old, f.name, None), getattr(new, f.name)
        if a != b:
            show = (lambda v: ", ".join(map(str, v)) or "—") if isinstance(b, tuple) else (lambda v: f"{v}")
            out.append(f"{f.name}: {show(a)} → {show(b)}")
    return out


def show_previous(res: jobs.Results) -> None:
    """Results of earlier settings: named as such, and folded away (never shown as the current ones)."""
    changes = changed_settings(res.settings, s)
    st.warning(
        "The sidebar's settings changed since the last run, so its results are not shown as current"
        + (f" (changed: {'; '.join(changes)})" if changes else "") + ". Press **Run attack** for these settings.",
        icon=":material/history:",
    )
    with st.expander("Previous results: " + settings_line(res), expanded=False):
        show_results(res, previous=True)


def show_results(res: jobs.Results, previous: bool = False) -> None:
    if previous:
        st.markdown("**Results of the previous settings** (not of the sidebar's current ones)")
    else:
        st.subheader("Results: stopped early, incomplete" if res.stopped else "Results")
    st.caption(settings_line(res))
    if previous:
        pass  # how they were obtained is about the earlier settings: no cache caption here
    elif res.defenses and all(d.from_cache for d in res.defenses):
        st.caption("From the server's result cache: computed earlier with exactly these settings (no attack ran).")
    elif res.elapsed_s is not None:
        waited = f", after waiting {fmt_seconds(res.waited_s)} for an attack slot" if res.waited_s >= 1 else ""
        cached = sum(d.from_cache for d in res.defenses)
        st.caption(f"The attacks took {fmt_seconds(res.elapsed_s)}{waited}"
                   + (f"; {cached} result(s) came from the cache." if cached else "."))
    if res.stopped:
        st.warning("Stopped early: these are the reconstructions reached so far"
                   + (f"; not run: {', '.join(defense_label(n) for n in res.skipped)}." if res.skipped else "."))
    for name, msg in res.errors.items():
        st.error(f"{defense_label(name) if name != 'job' else 'Run'} failed: {msg}")
    if not res.defenses:
        return

    # The pictures in rows of at most PER_ROW (same width in every row), the numbers in one table below.
    for row in rows_of(figure_panels(res), PER_ROW):
        for col, (title, subtitle, image) in zip(st.columns(PER_ROW), row):
            with col:
                st.markdown(f"**{title}**")
                st.image(upscale(image, 5), width="stretch")
                st.caption(subtitle)
    st.table(metrics_rows(res), hide_index=True)
    st.caption("PSNR between private image and reconstruction (data range 1): higher means more leakage, above "
               "~25 dB the image is recognisable. SSIM: 1 identical, ~0 unrelated.")

    # The attack's progress, one slider over the snapshots of every defense.
    steps = sorted({step for d in res.defenses for step in d.history_steps})
    if len(steps) > 1 and not previous:
        st.markdown("**Reconstruction over the iterations**")
        chosen = st.select_slider(
            "Attack step", options=steps, value=steps[-1], key=f"hist_{res.job_id}",
            help="Scrub through the snapshots the attack reported while it ran.",
        )
        shown = [d for d in res.defenses if any(st_ <= chosen for st_ in d.history_steps)]
        for row in rows_of(shown, PER_ROW):
            for col, d in zip(st.columns(PER_ROW), row):
                i = [j for j, st_ in enumerate(d.history_steps) if st_ <= chosen][-1]
                with col:
                    st.image(upscale(d.history_images[i], 4), width=128,
                             caption=f"{defense_label(d.defense)} · step {d.history_steps[i]}")
        curves = {d.defense: (d.history_steps, d.history_losses) for d in res.defenses if d.history_steps}
        if curves:
            st.plotly_chart(loss_curves(curves), key=f"loss_{res.job_id}")

    st.markdown("**Downloads**")
    d1, d2, d3 = st.columns(3)
    d1.download_button("Figure (PNG)", figure_png(res), file_name="comparison.png", mime="image/png",
                       icon=":material/image:", key=f"dl_png_{res.job_id}",
                       help="Private image, then each defense's reconstruction with its PSNR and SSIM, "
                            "upscaled without smoothing.")
    d2.download_button("Metrics (CSV)", res.metrics_csv, file_name="metrics.csv", mime="text/csv",
                       icon=":material/table:", key=f"dl_csv_{res.job_id}",
                       help="One row per defense: PSNR, SSIM, MSE, label accuracy, iterations, time.")
    d3.download_button("All artifacts (ZIP)", _zip(res), file_name="tip-comparison.zip", mime="application/zip",
                       icon=":material/folder_zip:", key=f"dl_zip_{res.job_id}",
                       help="Per defense: result.json, defense.json, metrics.csv and PNGs, exactly as the CLI "
                            "writes them; plus the comparison figure.")

    if previous:  # inside the previous results' expander (expanders do not nest): the rest is for current ones
        return
    with st.expander("Per defense: what it did to the update, the attacker's detection, result.json"):
        for d in res.defenses:
            st.markdown(f"**{defense_label(d.defense)}**")
            summary = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                                for k, v in d.summary.items())
            st.caption(f"{summary or 'no parameters'}" + (f" · {d.notes}" if d.notes else ""))
            show_analysis(d.analysis)
            st.download_button(f"result.json of {defense_label(d.defense)}", d.files["result.json"],
                               file_name=f"{d.defense}_result.json", mime="application/json",
                               key=f"dl_json_{res.job_id}_{d.defense}", icon=":material/download:",
                               help="The run's settings, seed, metrics and versions: the same file the CLI writes.")


# Results are shown as current only under the settings that produced them: their run keys (one per RunSpec)
# must be the keys of the plan the sidebar describes now. Otherwise the cache may hold exactly this plan
# (a shared link, a tour step, settings changed back): then those results are shown, and say so truthfully.
results: jobs.Results | None = st.session_state.get("results")
if not running:
    current = results is not None and results.matches(keys_now)
    if not current and plan_now and keys_now:
        found = jobs.cached_results(plan_now, None if image.gallery_id else image.image[None],
                                    jobs.result_cache(), state.snapshot(), image.caption, image.dataset)
        if found is not None:
            st.session_state["results"] = results = found
            current = True
    if current:
        show_results(results)
    else:
        st.info("Pick an image and defenses in the sidebar, then press **Run attack**.")
        if results is not None:
            show_previous(results)
