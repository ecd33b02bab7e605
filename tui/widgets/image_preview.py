"""An image preview. Half-block rendering (two pixels per cell, works in every truecolor terminal, tmux and the
browser) unless the app was started with Kitty (TGP) or Sixel graphics, which use textual-image.

Images are decoded and shrunk in a thread, so a big photo never stalls the UI."""

from __future__ import annotations

from pathlib import Path

from rich.style import Style
from rich.text import Text
from textual import work
from textual.reactive import Reactive, reactive, var
from textual.widget import Widget

from tui.workers import WorkerResults

THUMB_MAX = 256  # pixels kept in memory per preview (longest side)


def load_thumbnail(path: Path, max_side: int = THUMB_MAX):
    """An RGB PIL image no larger than `max_side`, or raises OSError/ValueError for unreadable files."""
    from PIL import Image, ImageOps

    from core.prep.images import to_rgb

    with Image.open(path) as im:
        im.draft("RGB", (max_side, max_side))
        im = ImageOps.exif_transpose(im)
        im.thumbnail((max_side, max_side))
        return to_rgb(im)  # transparency on the same background the trainer uses


def halfcell_text(image, width: int, height: int) -> Text:
    """`image` fitted into `width` x `height` cells, aspect kept, as rows of '▀' (top pixel fg, bottom pixel bg)."""
    if width < 1 or height < 1:
        return Text()
    w, h = image.size
    scale = min(width / w, (height * 2) / h)
    tw, th = max(1, int(w * scale)), max(2, int(h * scale))
    th += th % 2
    small = image.resize((tw, th))
    px = small.load()
    text = Text(no_wrap=True, overflow="crop")
    for y in range(0, th, 2):
        if y:
            text.append("\n")
        for x in range(tw):
            top, bottom = px[x, y], px[x, y + 1] if y + 1 < th else (0, 0, 0)
            text.append("▀", Style(color=f"rgb({top[0]},{top[1]},{top[2]})",
                                   bgcolor=f"rgb({bottom[0]},{bottom[1]},{bottom[2]})"))
    return text


class ImagePreview(WorkerResults, Widget):
    """Shows one image file: assign `path` (or call `set_image(path)`) to switch it, `None` clears it. Assigning the
    path it shows again reloads it only when it is not shown yet (a preview read while it was still being written)."""

    DEFAULT_CSS = """
    ImagePreview { height: 1fr; width: 1fr; content-align: center middle; }
    """

    # a var: its watcher decides whether to reload, and `thumb`/`error` repaint (a re-render of the same image on every
    # assignment would cost the monitor's 4 Hz redraw a half-block rebuild each time)
    path: var[Path | None] = var(None, always_update=True, init=False)
    thumb = reactive(None, always_update=True)  # the decoded PIL image (always_update: == would compare pixels)
    error: reactive[str] = reactive("")  # why the file cannot be shown

    def __init__(self, protocol: str | None = None, *, placeholder: str = "no image", id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._protocol = protocol
        self.placeholder = placeholder
        self._graphics = None

    def on_mount(self) -> None:
        if isinstance(getattr(type(self.app), "image_protocol", None), Reactive):  # the wizard's image mode (ctrl+g)
            self.watch(self.app, "image_protocol", self.reset_protocol, init=False)

    @property
    def protocol(self) -> str:
        if self._protocol:
            return self._protocol
        return getattr(self.app, "image_protocol", "halfcell")

    def reset_protocol(self) -> None:
        """Follow the app's (changed) image mode: drop any graphics widget and show the same image again."""
        self._protocol = None
        if self._graphics is not None:
            self._graphics.remove()
            self._graphics = None
        self.thumb = None
        self.path = self.path

    def set_image(self, path: str | Path | None) -> None:
        self.path = path

    def validate_path(self, path: str | Path | None) -> Path | None:
        return Path(path) if path else None

    def watch_path(self, old: Path | None, path: Path | None) -> None:
        if path == old and (self.thumb is not None or self._graphics is not None):
            return
        self.thumb = None
        self.error = ""
        if path is None:
            self._show_graphics(None)
        elif self.protocol in ("tgp", "sixel"):
            self._show_graphics(path)
        else:
            self._load(path)

    def _show_graphics(self, path: Path | None) -> None:
        if self.protocol not in ("tgp", "sixel"):
            return
        try:
            from textual_image import widget as ti
        except Exception:  # textual-image missing or terminal probing failed: half-block instead
            self._protocol = "halfcell"
            if path is not None:
                self._load(path)
            return
        if self._graphics is None:
            cls = ti.TGPImage if self.protocol == "tgp" else ti.SixelImage
            self._graphics = cls()
            self._graphics.styles.width = "100%"
            self._graphics.styles.height = "100%"
            self.mount(self._graphics)
        self._graphics.image = path

    @work(thread=True, exclusive=True, group="image-preview", exit_on_error=False)
    def _load(self, path: Path) -> tuple:
        try:
            return path, load_thumbnail(path), ""
        except Exception as exc:  # unreadable or not an image: say so in place
            return path, None, f"cannot show {path.name}: {exc}"

    def _load_done(self, loaded: tuple) -> None:
        path, thumb, message = loaded
        if path != self.path:
            return
        self.thumb, self.error = thumb, message

    def render(self) -> Text:
        if self._graphics is not None and self.path is not None:
            return Text()
        if self.error:
            return Text(self.error, style="red")
        if self.thumb is None:
            return Text(self.placeholder if self.path is None else "loading…", style="dim")
        size = self.content_size
        return halfcell_text(self.thumb, size.width, size.height)
