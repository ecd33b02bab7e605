"""The tiwiz Textual app: one wizard state, one screen per stage, Next/Back between them.

Screen modules are imported when first shown, so the cold start only pays for the start screen."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from textual.app import App
from textual.binding import Binding
from textual.reactive import var

from core.runs.folder import default_root
from tui.state import STAGES, WizardState, default_state_path, load_state, neighbour_stage, save_state

SCREEN_CLASSES = {
    "start": ("tui.screens.start", "StartScreen"),
    "model": ("tui.screens.model", "ModelScreen"),
    "folders": ("tui.screens.folders", "FoldersScreen"),
    "preprocess": ("tui.screens.preprocess", "PreprocessScreen"),
    "captions": ("tui.screens.captions", "CaptionsScreen"),
    "embedding": ("tui.screens.embedding", "EmbeddingScreen"),
    "training": ("tui.screens.training", "TrainingScreen"),
    "monitor": ("tui.screens.monitor", "MonitorScreen"),
    "finish": ("tui.screens.finish", "FinishScreen"),
}
IMAGE_PROTOCOLS = ("auto", "tgp", "sixel", "halfcell")


def screen_class(stage: str):
    module, name = SCREEN_CLASSES[stage]
    return getattr(importlib.import_module(module), name)


class TiwizApp(App):
    """The wizard. Everything environment-dependent (state file, runs folder, image protocol, the clock used for
    display) is injected, so tests and snapshots are deterministic."""

    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "tiwiz"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True),
                Binding("f10", "quit", "Quit", show=False, priority=True),  # a browser keeps ctrl+q
                Binding("ctrl+g", "cycle_images", "Image mode", show=False, priority=True),
                Binding("tab", "tab(1)", show=False, priority=True),
                Binding("shift+tab", "tab(-1)", show=False, priority=True)]

    image_protocol: var[str] = var("halfcell", init=False)  # every ImagePreview follows it (halfcell, tgp, sixel)

    def __init__(self, *, state: WizardState | None = None, state_path: str | os.PathLike | None = None,
                 runs_root: str | os.PathLike | None = None, image_protocol: str = "halfcell",
                 attach: str | os.PathLike | None = None, demo: bool = False, save: bool = True,
                 start_stage: str | None = None, finder_roots=None) -> None:
        super().__init__()
        self.state_path = Path(state_path) if state_path else default_state_path()
        self.saved_state = load_state(self.state_path) if state is None else None
        self.state = state if state is not None else WizardState()
        self.runs_root = Path(runs_root) if runs_root else default_root()  # the CLI's: $TIWIZ_RUNS_DIR or ./runs
        self.set_reactive(TiwizApp.image_protocol, image_protocol)
        self.attach_dir = Path(attach) if attach else None
        self.start_demo = demo
        self.save_enabled = save
        self.start_stage = start_stage
        self.finder_roots = finder_roots  # checkpoint search roots (None: the usual A1111/ComfyUI/HF places)
        self.exit_message = ""
        self.check_liveness = True  # the monitor asks core.runs.folder whether the worker still lives

    def on_mount(self) -> None:
        if self.attach_dir is not None:
            self.state.run_dir = str(self.attach_dir)
            self.push_screen(screen_class("monitor")())
            return
        stage = self.start_stage or "start"
        self.state.stage = stage
        self.push_screen(screen_class(stage)())
        if self.start_demo and stage == "start":
            self.call_after_refresh(self.screen.action_demo)

    # --- navigation ------------------------------------------------------------------------------------------

    def goto(self, stage: str) -> None:
        """Show `stage` (replacing the current screen) and save the state."""
        if stage not in STAGES:
            raise ValueError(stage)
        self.state.stage = stage
        self.save()
        self.switch_screen(screen_class(stage)())

    def next_stage(self, current: str) -> None:
        self.goto(self.neighbour(current, +1))

    def prev_stage(self, current: str) -> None:
        self.goto(self.neighbour(current, -1))

    def neighbour(self, current: str, direction: int) -> str:
        return neighbour_stage(current, direction, skip_preprocess=self.state.skip_preprocess)

    def save(self) -> None:
        if not self.save_enabled:
            return
        try:
            save_state(self.state, self.state_path)
        except OSError as exc:
            self.notify(f"Could not save the wizard state to {self.state_path}: {exc.strerror or exc}",
                        severity="warning")

    async def action_quit(self) -> None:
        """ctrl+q: while the monitor shows a run that is still training, quitting leaves it running: say how to come
        back, as `d` does."""
        run_dir = getattr(self.screen, "training_run", None)
        if run_dir is not None:
            self.detach(run_dir)
        else:
            self.exit()

    def detach(self, run_dir: Path) -> None:
        """Leave the UI while the run goes on, telling the user how to come back."""
        self.exit_message = (f"Training continues in the background.\nAttach again with:\n  tiwiz attach {run_dir}\n"
                             f"or reopen the wizard's monitor with:\n  tiwiz wizard --attach {run_dir}")
        self.save()
        self.exit()

    async def action_tab(self, direction: int) -> None:
        """Tab and shift+Tab, run as the App reads the keys, so the keys typed after them in a burst go to the field
        they were typed for (Textual's own Tab runs only after every key already read has gone to the old field). A
        Tab binding of the focused widget (path completion) runs here too, in the same order."""
        key = "tab" if direction > 0 else "shift+tab"
        focused = self.focused
        if focused is not None:
            for binding in focused._bindings.key_to_bindings.get(key, ()):
                if await self.run_action(binding.action, focused):
                    return
        if direction > 0:
            self.screen.focus_next()
        else:
            self.screen.focus_previous()

    def on_ordered_input_refused(self, event) -> None:
        """A field in a dialog refused a character (wizard screens show it in their message line)."""
        self.notify(event.sentence, severity="warning", timeout=4)

    # --- images -------------------------------------------------------------------------------------------------

    def image_protocols(self) -> list[str]:
        """The image modes this session can switch between: half-block always; Kitty (tgp) and Sixel only when
        textual-image was loaded at start-up, since it must probe the terminal before Textual takes it over."""
        graphics = ["tgp", "sixel"] if "textual_image.widget" in sys.modules else []
        return ["halfcell", *graphics]

    def action_cycle_images(self) -> None:
        """Switch every image to the next mode, e.g. back to half-block when graphics come out garbled (each
        ImagePreview watches `image_protocol`)."""
        modes = self.image_protocols()
        current = self.image_protocol if self.image_protocol in modes else "halfcell"
        self.image_protocol = modes[(modes.index(current) + 1) % len(modes)]
        names = {"halfcell": "half-block", "tgp": "Kitty graphics", "sixel": "Sixel"}
        only = "" if len(modes) > 1 else " (the only mode: start with --image-protocol tgp or sixel for graphics)"
        self.notify(f"Images: {names[self.image_protocol]}{only}", timeout=4)


def resolve_image_protocol(requested: str) -> str:
    """Pick tgp/sixel/halfcell. Probing the terminal must happen before Textual takes it over, so it happens here."""
    if requested == "halfcell":
        return "halfcell"
    if not sys.stdout.isatty() or os.environ.get("TEXTUAL_DRIVER", "").endswith("WebDriver"):
        return "halfcell"
    try:
        from textual_image import renderable
        from textual_image.renderable import sixel, tgp
        import textual_image.widget  # noqa: F401  (fills the cell-size cache while the terminal can still answer)
    except Exception:
        return "halfcell"
    if requested in ("tgp", "sixel"):
        return requested
    if renderable.Image is tgp.Image:
        return "tgp"
    if renderable.Image is sixel.Image:
        return "sixel"
    return "halfcell"


def build_parser(prog: str = "tiwiz") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="The tiwiz wizard (run `tiwiz --help` for commands).")
    parser.add_argument("--demo", action="store_true", help="start the demo: the tiny model and sample images")
    parser.add_argument("--attach", metavar="RUN_DIR", help="open the training monitor of a run folder")
    parser.add_argument("--image-protocol", choices=IMAGE_PROTOCOLS, default=os.environ.get("TIWIZ_IMAGES", "auto"),
                        help="how previews are drawn: auto (Kitty/Sixel when the terminal supports it), tgp, sixel, "
                             "or halfcell (works everywhere)")
    parser.add_argument("--runs", metavar="DIR", help="where runs are kept (default: the runs folder)")
    parser.add_argument("--fresh", action="store_true", help="ignore the saved wizard state")
    parser.add_argument("--serve", metavar="PORT", type=int, nargs="?", const=8000,
                        help="serve the wizard to a browser instead: the same as `tiwiz serve --port PORT` (default "
                             "8000; needs tiwiz[web])")
    return parser


def serve(args: argparse.Namespace) -> int:
    """`tiwiz wizard --serve [PORT]`: `tiwiz serve --port PORT`, the served wizard getting this command's --runs,
    --demo, --attach and --fresh."""
    from core.cli import main as cli_main

    argv = ["serve", "--port", str(args.serve)] + (["--runs", args.runs] if args.runs else [])
    app_args = (["--demo"] if args.demo else []) + (["--fresh"] if args.fresh else [])
    app_args += ["--attach", str(Path(args.attach).absolute())] if args.attach else []
    return cli_main(argv + [f"--app-arg={arg}" for arg in app_args])


def make_app(argv: list[str]) -> TiwizApp:
    """The app exactly as `tiwiz ARGV` builds it (the wizard tests start it this way)."""
    args = build_parser().parse_args(argv)
    protocol = resolve_image_protocol(args.image_protocol)
    state = WizardState() if args.fresh else None
    return TiwizApp(state=state, runs_root=args.runs, image_protocol=protocol, attach=args.attach, demo=args.demo)


def run_app(argv: list[str] | None = None, prog: str = "tiwiz") -> int:
    """`tiwiz [OPTIONS]` or `tiwiz wizard [OPTIONS]` (`prog`: how its usage line names it)."""
    args = build_parser(prog).parse_args(argv or [])
    if args.serve is not None:
        return serve(args)
    if args.attach and not Path(args.attach).is_dir():
        print(f"tiwiz: error: {args.attach} is not a run folder.", file=sys.stderr)
        return 2
    app = make_app(argv or [])
    app.run()
    if app.exit_message:
        print(app.exit_message)
    return int(app.return_code or 0)
