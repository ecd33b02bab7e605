"""The wizard's way to a run's previews page (`o` on the monitor and the finish screen). Served in a browser
(`tiwiz serve`), it opens the page in a new tab; in a terminal, where previews are at best half-block mosaics (tmux),
it says where a browser shows them at full size."""

from __future__ import annotations

from pathlib import Path

from core.serve import links


def open_previews(app, run_dir: Path) -> None:
    if app.is_web:
        path = links.page_path(run_dir, app.runs_root)
        if path is None:
            app.notify(f"This run is not in the served runs folder ({app.runs_root}): its previews page is under "
                       "a `tiwiz serve --runs` of its own folder.", severity="warning", timeout=10)
        else:
            app.open_url(path, new_tab=True)
        return

    def tell() -> None:  # reads the server records: off the UI thread
        app.call_from_thread(app.notify, links.where_to_see(run_dir), title="Previews", timeout=20)

    app.run_worker(tell, thread=True, group="previews-hint", exit_on_error=False)
