"""Rebuild core/data/clip_tokenizer from open_clip's BPE file (run once; the output is committed).

Usage: pip install --no-deps open_clip_torch && python tools/build_clip_tokenizer.py
The vocabulary is built the way OpenAI's SimpleTokenizer builds it (see shared/reference/offline-models.md).
"""
import gzip
import json
import sys
from pathlib import Path
import importlib.util

OUT = Path(__file__).resolve().parent.parent / "core" / "data" / "clip_tokenizer"


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def main():
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        sys.exit("open_clip_torch is not installed: pip install --no-deps open_clip_torch")
    bpe = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m) for m in merges)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    cfg = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (OUT / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    (OUT / "special_tokens_map.json").write_text(json.dumps({k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, indent=1))
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    main()
