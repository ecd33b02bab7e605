"""What an embedding's vectors are doing: norms against the vocabulary's, nearest vocabulary tokens, and the cosine
between two embeddings. Used by the trainer (every checkpoint event) and by `tiwiz inspect`.

A trained vector whose norm grows far beyond the vocabulary's typical norm "swamps the prompt": attention is drawn
to it and the rest of the prompt stops mattering (Directional Textual Inversion, Kim et al. 2025, traces TI failures
on complex prompts to this norm inflation). NORM_WARN_FACTOR x the vocabulary's median norm is where we warn.

The vocabulary is read without building the model: only the token-embedding matrix is read from the text encoder's
weights (a diffusers folder or a single checkpoint file), and the tokenizer is the model's own or the bundled CLIP
tokenizer (SD1, SD2 and SDXL share CLIP's 49,408-token vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.errors import TiwizError

NORM_WARN_FACTOR = 4.0  # x the vocabulary's median token norm
NEAREST_K = 3
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


@dataclass(frozen=True)
class NormStats:
    median: float
    p05: float
    p95: float
    max: float

    def warn_above(self) -> float:
        return NORM_WARN_FACTOR * self.median

    def describe(self, norm: float) -> str:
        """Where `norm` lies in the vocabulary's norm distribution."""
        where = "below the 5th percentile" if norm < self.p05 else "above every token" if norm > self.max else \
            "above the 95th percentile" if norm > self.p95 else "within the vocabulary's 5-95% range"
        times = f"{norm / self.median:.1f}x" if self.median > 0 else "n/a:"
        return f"{times} the median token norm ({self.median:.3f}); {where}"


@dataclass
class Vocabulary:
    """One text encoder's token embeddings: `weight` fp32 [V, dim] and the token text of each row."""
    weight: object
    tokens: list[str]
    label: str = ""  # which encoder: "", "clip_l" or "clip_g"
    _unit: object = field(default=None, repr=False)
    _stats: NormStats | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def norm_stats(self) -> NormStats:
        if self._stats is None:
            import torch

            norms = self.weight.float().norm(dim=1)
            q = torch.quantile(norms, torch.tensor([0.05, 0.5, 0.95]))
            self._stats = NormStats(median=float(q[1]), p05=float(q[0]), p95=float(q[2]), max=float(norms.max()))
        return self._stats

    def nearest(self, vectors, k: int = NEAREST_K) -> list[list[tuple[str, float]]]:
        """For each vector, the k vocabulary tokens of highest cosine similarity: [(token, cosine), ...]."""
        import torch

        if self._unit is None:
            unit = torch.nn.functional.normalize(self.weight.float(), dim=1)
            for i, tok in enumerate(self.tokens):  # never suggest the start/end markers
                if tok in _SPECIAL:
                    unit[i] = 0.0
            self._unit = unit
        vec = torch.nn.functional.normalize(vectors.detach().float().cpu(), dim=1)
        sims = vec @ self._unit.T
        top = sims.topk(min(k, sims.shape[1]), dim=1)
        return [[(self.tokens[int(i)], round(float(s), 4)) for s, i in zip(row_s, row_i)]
                for row_s, row_i in zip(top.values, top.indices)]


def clean_token(token: str) -> str:
    """CLIP's BPE token as a reader sees it: 'heart</w>' -> 'heart', a word piece keeps a trailing '-'."""
    return token[:-4] if token.endswith("</w>") else token + "-"


def vocabulary_from_encoder(text_encoder, tokenizer, label: str = "") -> Vocabulary:
    """The vocabulary of a loaded text encoder (the trainer's)."""
    weight = text_encoder.get_input_embeddings().weight.detach().float().cpu()
    return Vocabulary(weight=weight, tokens=_token_texts(tokenizer, weight.shape[0]), label=label)


def _token_texts(tokenizer, n: int) -> list[str]:
    if tokenizer is None:
        from core.tokens import _get_tokenizer

        tok = _get_tokenizer()
        raw = [tok.id_to_token(i) or "" for i in range(n)]
    else:
        raw = tokenizer.convert_ids_to_tokens(list(range(n)))
    return [t if t in _SPECIAL else clean_token(t or "") for t in raw]


def vector_report(vectors, vocab: Vocabulary | None, k: int = NEAREST_K) -> dict:
    """Norms, nearest tokens and norm warnings of `vectors` [n, dim] (JSON-able; the checkpoint event carries it)."""
    norms = [round(float(v.float().norm()), 5) for v in vectors]
    report = {"norms": norms, "nearest": None, "vocab_median_norm": None, "norm_warnings": []}
    if vocab is None or vocab.dim != int(vectors.shape[1]):
        return report
    stats = vocab.norm_stats()
    report["vocab_median_norm"] = round(stats.median, 5)
    report["nearest"] = [[[tok, cos] for tok, cos in row] for row in vocab.nearest(vectors, k)]
    report["norm_warnings"] = [norm_warning(i, n, stats) for i, n in enumerate(norms) if n > stats.warn_above()]
    return report


def norm_warning(index: int, norm: float, stats: NormStats) -> str:
    return (f"vector {index} has norm {norm:.3f}, {norm / stats.median:.1f}x the vocabulary's median token norm "
            f"({stats.median:.3f}); it may swamp the rest of the prompt (lower lr, or pick an earlier checkpoint)")


# ---- reading a model's vocabulary without building the model ------------------------------------------------------
def load_vocabularies(model) -> list[Vocabulary]:
    """The token embeddings of a model's text encoder(s): a diffusers folder (text_encoder/, text_encoder_2/) or a
    single .safetensors checkpoint. SDXL gives two: clip_l (768) and clip_g (1280). A damaged or hostile model is a
    TiwizError saying so in one line; what is not a regular file is never opened."""
    from core.models.headers import require_regular_file
    from core.models.loader import resolve_model_path

    path = resolve_model_path(model)
    if path.is_dir():
        return _folder_vocabularies(path)
    require_regular_file(path)
    if path.suffix.lower() == ".safetensors":
        return _file_vocabularies(path)
    from core.models.loader import load_model  # .ckpt: a pickle; let the loader handle it safely

    loaded = load_model(path, device="cpu")
    if getattr(loaded, "text_encoder_2", None) is None:
        return [vocabulary_from_encoder(loaded.text_encoder, loaded.tokenizer)]
    return [vocabulary_from_encoder(loaded.text_encoder, loaded.tokenizer, "clip_l"),
            vocabulary_from_encoder(loaded.text_encoder_2, loaded.tokenizer_2, "clip_g")]


_TOKEN_EMBEDDING = "token_embedding.weight"


def _token_embeddings(path: Path) -> list:
    """Every `*token_embedding.weight` matrix of a weights file as fp32, each checked to be a finite, non-zero 2-D
    matrix. A safetensors file's header is validated (complete, sane shapes) before any tensor is read; a pickle is
    read with weights_only=True and refused, in our words, when it holds more than tensors."""
    from core.models.headers import read_safetensors_header, require_regular_file

    require_regular_file(path)
    if path.suffix == ".safetensors":
        header = read_safetensors_header(path)
        keys = [k for k in header.shapes if k.endswith(_TOKEN_EMBEDDING)]
        for key in keys:
            shape, dtype = header.shapes[key], header.dtypes[key]
            if len(shape) != 2 or min(shape) < 1 or not (dtype.startswith("F") or dtype == "BF16"):
                raise TiwizError(f"{path}: {key} is {dtype} {list(shape)}, not a token-embedding matrix (the file is "
                                 "damaged, or not a Stable Diffusion model)")
        found = _read_safetensors_tensors(path, keys)
    else:
        found = [value for key, value in _plain_tensors(path).items() if str(key).endswith(_TOKEN_EMBEDDING)]
    for weight in found:
        _check_matrix(path, weight)
    return [weight.float() for weight in found]


def _read_safetensors_tensors(path: Path, keys: list[str]) -> list:
    from safetensors import safe_open

    from core.embeddings.formats import first_line

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return [fh.get_tensor(key) for key in keys]
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for lying headers
        raise TiwizError(f"{path}: cannot read the token embeddings ({first_line(exc)}); the file is damaged") \
            from None


def _plain_tensors(path: Path) -> dict:
    import pickle

    import torch

    from core.embeddings.formats import first_line
    from core.errors import pickle_refusal

    try:
        with open(path, "rb") as fh:
            data = torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        why = pickle_refusal(exc) or "it holds Python objects beyond plain tensors"
        raise TiwizError(f"refused to load {path}: {why}, and loading that could run code (nothing was run); "
                         "tiwiz reads only plain-tensor weights: use the model's .safetensors files") from None
    except Exception as exc:  # noqa: BLE001 - a bad zip, a short read, an unknown storage type ...
        raise TiwizError(f"{path}: cannot read it ({first_line(exc)}); the file is damaged") from None
    if not isinstance(data, dict):
        raise TiwizError(f"{path}: not a text encoder's weights (holds {type(data).__name__.lower()} data)")
    return data


def _check_matrix(path: Path, weight) -> None:
    import torch

    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or min(weight.shape) < 1 \
            or not weight.is_floating_point():
        raise TiwizError(f"{path}: the token embeddings are not a 2-D matrix of numbers (the file is damaged)")
    weight = weight.float()
    if not torch.isfinite(weight).all() or float(weight.norm(dim=1).median()) == 0.0:
        raise TiwizError(f"{path}: the token embeddings are all zero or not finite (a damaged or placeholder model)")


def _folder_vocabularies(path: Path) -> list[Vocabulary]:
    out = []
    for sub, tok_sub, label in (("text_encoder", "tokenizer", ""), ("text_encoder_2", "tokenizer_2", "clip_g")):
        folder = path / sub
        if not folder.is_dir():
            continue
        files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
        if not files:
            raise TiwizError(f"{path}: {sub}/ has no weights file")
        found = _token_embeddings(files[0])
        if not found:
            raise TiwizError(f"{files[0]}: no token-embedding matrix in this text encoder")
        weight = found[0]
        tokenizer = None
        if (path / tok_sub).is_dir():
            from transformers import CLIPTokenizer

            tokenizer = CLIPTokenizer.from_pretrained(path / tok_sub, local_files_only=True)
        out.append(Vocabulary(weight=weight, tokens=_token_texts(tokenizer, weight.shape[0]), label=label))
    if not out:
        raise TiwizError(f"{path}: not a diffusers model folder (no text_encoder/)")
    if len(out) == 2:
        out[0].label = "clip_l"
    return out


def _file_vocabularies(path: Path) -> list[Vocabulary]:
    found = _token_embeddings(path)
    if not found:
        raise TiwizError(f"{path}: no text-encoder token embeddings found (not an SD checkpoint?)")
    found.sort(key=lambda w: w.shape[1])
    labels = ["clip_l", "clip_g"] if len(found) == 2 else [""]
    return [Vocabulary(weight=w, tokens=_token_texts(None, w.shape[0]), label=lab) for w, lab in zip(found, labels)]


# ---- files ---------------------------------------------------------------------------------------------------------
def embedding_parts(path) -> tuple[object, dict]:
    """(LoadedEmbedding, {label: vectors}) for any file tiwiz loads; SDXL files give {"clip_l": .., "clip_g": ..}."""
    from core.embeddings.formats import load_embedding

    emb = load_embedding(path)
    parts = getattr(emb, "parts", None)  # SDXL reading (formats.py) exposes per-encoder tensors when present
    if isinstance(parts, dict) and parts:
        return emb, dict(parts)
    return emb, {"": emb.vectors}


def cosine(a, b) -> float:
    import torch

    a, b = a.detach().float().flatten(), b.detach().float().flatten()
    denom = float(a.norm() * b.norm())
    return float(torch.dot(a, b)) / denom if denom > 0 else float("nan")


def compare(parts_a: dict, parts_b: dict) -> dict:
    """Cosine between two embeddings, per encoder part: per vector pair (when counts match) and of the means."""
    out = {}
    for label in parts_a:
        if label not in parts_b or parts_a[label].shape[1] != parts_b[label].shape[1]:
            continue
        a, b = parts_a[label], parts_b[label]
        pairs = [cosine(x, y) for x, y in zip(a, b)] if a.shape[0] == b.shape[0] else None
        out[label] = {"per_vector": pairs, "mean_vector": cosine(a.mean(0), b.mean(0))}
    if not out:
        raise TiwizError("the two embeddings have no part of the same width to compare (different model families?)")
    return out


def inspect_file(path, model=None, other=None, k: int = 5, vocabs: list[Vocabulary] | None = None) -> dict:
    """Everything `tiwiz inspect` prints, as a JSON-able dict. `vocabs` (from `load_vocabularies(model)`) saves
    reading the model again when inspecting many files."""
    emb, parts = embedding_parts(path)
    if vocabs is None:
        vocabs = load_vocabularies(model) if model else []
    model = model or bool(vocabs)
    report = {"file": str(path), "name": emb.name, "format": emb.format, "step": emb.step, "parts": {}}
    for label, vectors in parts.items():
        vocab = _match_vocab(vocabs, label, int(vectors.shape[1]))
        if model and vocab is None:
            raise TiwizError(f"{Path(path).name} is {vectors.shape[1]} wide; the model's text encoder(s) are "
                             f"{', '.join(str(v.dim) for v in vocabs)} wide (another model family?)")
        part = vector_report(vectors, vocab, k)
        if vocab is not None:
            stats = vocab.norm_stats()
            part["vocab_norms"] = {"median": stats.median, "p05": stats.p05, "p95": stats.p95, "max": stats.max}
            part["norm_position"] = [stats.describe(n) for n in part["norms"]]
        part["vectors"] = int(vectors.shape[0])
        part["dim"] = int(vectors.shape[1])
        report["parts"][label] = part
    if other is not None:
        other_emb, other_parts = embedding_parts(other)
        report["other"] = {"file": str(other), "name": other_emb.name}
        report["cosine"] = compare(parts, other_parts)
    return report


def _match_vocab(vocabs: list[Vocabulary], label: str, dim: int) -> Vocabulary | None:
    for vocab in vocabs:
        if vocab.dim == dim and (not label or not vocab.label or vocab.label == label):
            return vocab
    return None


def format_report(report: dict) -> str:
    """The human-readable text of `tiwiz inspect`."""
    from core.embeddings.formats import describe_width

    lines = [f"{report['file']}: '{report['name']}' ({report['format']} format"
             + (f", step {report['step']}" if report.get("step") is not None else "") + ")"]
    for label, part in report["parts"].items():
        head = f"  {label}: " if label else "  "
        lines.append(f"{head}{part['vectors']} vector(s), width {describe_width(part['dim'])}")
        for i, norm in enumerate(part["norms"]):
            text = f"    vector {i}: norm {norm:.4f}"
            if part.get("norm_position"):
                text += f" ({part['norm_position'][i]})"
            lines.append(text)
            if part.get("nearest"):
                near = ", ".join(f"{tok} {cos:.2f}" for tok, cos in part["nearest"][i])
                lines.append(f"      nearest tokens: {near}")
        if part.get("vocab_norms"):
            v = part["vocab_norms"]
            lines.append(f"    vocabulary norms: median {v['median']:.4f}, 5-95% {v['p05']:.4f}-{v['p95']:.4f}, "
                         f"max {v['max']:.4f}")
        for warning in part.get("norm_warnings") or []:
            lines.append(f"    warning: {warning}")
    if "cosine" in report:
        lines.append(f"  compared with {report['other']['file']} ('{report['other']['name']}'):")
        for label, cos in report["cosine"].items():
            head = f"    {label}: " if label else "    "
            per = cos["per_vector"]
            per_text = ", ".join(f"{c:.3f}" for c in per) if per is not None else "vector counts differ"
            lines.append(f"{head}cosine per vector: {per_text}; of the mean vectors: {cos['mean_vector']:.3f}")
    if not any(part.get("nearest") for part in report["parts"].values()):
        lines.append("  (give --model to see nearest tokens and how the norms compare with the vocabulary's)")
    return "\n".join(lines)
