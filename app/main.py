"""Entry point: `streamlit run app/main.py`. Page config and navigation; the pages live in app/views/."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Several visitors share two cores: OpenMP threads must wait passively, not spin (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# `streamlit run app/main.py` puts app/ on sys.path, not the repository root: add the root so that
# `import app.…` and `import tipcore` work even without `pip install -e .`.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import jobs, resources  # noqa: E402  (light: no engine, no torch)
from tipcore.common import bundle  # noqa: E402  (where assets/ is: checkout or installed wheel)

# The icon is a bundled file: Streamlit points an emoji page_icon at a CDN (fails offline). "auto" keeps the
# sidebar open on a desktop and collapsed on a phone, where it would cover most of the page.
FAVICON = bundle.ASSETS_DIR / "icon" / "favicon.png"
st.set_page_config(
    page_title="TIP explorer: gradient inversion in federated learning",
    page_icon=str(FAVICON),
    layout="wide",
    initial_sidebar_state="auto",
)

PAGES = [
    st.Page("views/punchline.py", title="Punchline", icon=":material/bolt:", default=True),
    st.Page("views/live.py", title="Live attack", icon=":material/play_circle:", url_path="live"),
    st.Page("views/tip.py", title="How TIP works", icon=":material/tune:", url_path="how-tip-works"),
    st.Page("views/leaks.py", title="What leaks", icon=":material/visibility:", url_path="what-leaks"),
    st.Page("views/frontier.py", title="Privacy–utility frontier", icon=":material/scatter_plot:",
            url_path="frontier"),
    st.Page("views/teach.py", title="Teach", icon=":material/school:", url_path="teach"),
]

page = st.navigation(PAGES)

# Phones (narrow screens): Plotly's toolbar sat over the chart titles, so it goes (a chart still zooms with
# two fingers); a formula of several parts is shown in lines (app/panels.formula draws both copies) and any
# still wider than the screen scrolls sideways instead of being cut off; a page link's label wraps instead of
# ending in "…".
st.html("""<style>
.katex-display { overflow-x: auto; overflow-y: hidden; padding-bottom: 2px; }
[class*="st-key-tex_narrow_"] { display: none; }
@media (max-width: 640px) {
  .modebar-container { display: none !important; }
  .katex-display > .katex { font-size: 0.9em; }
  [class*="st-key-tex_wide_"] { display: none; }
  [class*="st-key-tex_narrow_"] { display: flex; }
  [data-testid="stPageLink-NavLink"] span, [data-testid="stPageLink-NavLink"] p {
    white-space: normal; overflow: visible; text-overflow: clip; }
}
</style>""")

# The engine loads in a background thread. A page opened before it is ready (a direct link to a fresh server)
# says what it waits for instead of drawing a blank main area. Pages drawn from precomputed assets (the
# punchline, a visitor's first view; Teach) need no torch (labels are worded without the registries while it
# loads: app/labels.py), so they neither wait for it nor share the CPU with it: it starts once they are drawn.
ASSET_PAGES = {"", "teach"}
on_asset_page = page.url_path in ASSET_PAGES
if not on_asset_page and not resources.engine_warmup().ready:
    with st.spinner("Loading the engine (PyTorch, the models and Grad-CAM): the first visit after a server "
                    "start takes a few seconds …", show_time=True):
        resources.engine_warmup().wait()

# On the live page, Streamlit's toolbar Stop stops the session's attack: through the session's stop handler
# (jobs.install_toolbar_stop_hook, which also redraws the interrupted page) and, when it interrupts a script
# run, through StopException (the job looked up then: this very run may have started it).
jobs.install_toolbar_stop_hook()
on_live_page = page.url_path == "live"
jobs.watch_toolbar_stop(on_live_page, st.session_state.get("job") if on_live_page else None)
with jobs.stop_on_script_stop(lambda: st.session_state.get("job") if on_live_page else None):
    page.run()
if on_asset_page:
    resources.engine_warmup()  # the first view is drawn: load the engine for the pages that need it
