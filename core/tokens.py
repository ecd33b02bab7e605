"""CLIP token counting without torch: the bundled tokenizer.json through the `tokenizers` library.

A count excludes the start/end tokens, so it compares directly with the 75-token prompt chunk of SD1/SD2.
"""

from __future__ import annotations

import threading
from pathlib import Path

TOKEN_LIMIT = 75
TOKENIZER_JSON = Path(__file__).resolve().parent / "data" / "clip_tokenizer" / "tokenizer.json"

_lock = threading.Lock()
_tokenizer = None
_cache: dict[str, int] = {}
_CACHE_MAX = 50_000


def _get_tokenizer():
    global _tokenizer
    if _tokenizer is None:
        with _lock:
            if _tokenizer is None:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_file(str(TOKENIZER_JSON))
                tok.no_truncation()
                tok.no_padding()
                _tokenizer = tok
    return _tokenizer


def token_ids(text: str) -> list[int]:
    """CLIP ids of `text` without the start/end tokens."""
    ids = _get_tokenizer().encode(text or "").ids
    return ids[1:-1] if len(ids) >= 2 else []


def token_pieces(text: str) -> list[str]:
    """The CLIP tokens of `text` as readable pieces (the end-of-word marker dropped)."""
    tok = _get_tokenizer()
    return [(tok.id_to_token(i) or "?").replace("</w>", "") for i in token_ids(text)]


def count_tokens(text: str) -> int:
    """Number of CLIP tokens in `text`, excluding start/end (the figure the 75-token limit applies to)."""
    return count_tokens_many([text])[0]


def count_tokens_many(texts: list[str]) -> list[int]:
    """Token counts of many strings; one tokenizer call for those not seen before (results are cached)."""
    known = {t: _cache[t] for t in texts if t in _cache}
    missing = [t for t in dict.fromkeys(texts) if t not in known]
    if missing:
        encoded = _get_tokenizer().encode_batch([t or "" for t in missing])
        if len(_cache) > _CACHE_MAX:
            _cache.clear()
        for text, enc in zip(missing, encoded):
            known[text] = _cache[text] = max(len(enc.ids) - 2, 0)
    return [known[t] for t in texts]
