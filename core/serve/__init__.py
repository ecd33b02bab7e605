"""`tiwiz serve`: the wizard in a browser (through textual-serve) and each run's previews, contact sheet and loss curve
as real images, behind a token on every request.

- `auth`: the token (made, given or from TIWIZ_TOKEN), the cookie, the gate every request passes, the access log
  that never writes the token.
- `urls`: which hosts count as loopback and the URLs printed at start (RunPod proxy, SSH tunnel, --public-url).
- `pages`: the runs pages and their images; `loss_png`: the loss curve drawn with Pillow.
- `wizard`: textual-serve's pieces, with URLs the page derives from its own location (works behind proxies).
- `server`: the aiohttp application, the foreground server and the detached one (its record in the runs folder).
- `links`: where a run's previews page is, for the wizard's monitor and finish screens.

Needs the `web` extra (aiohttp, textual-serve); nothing here imports textual itself.
"""
