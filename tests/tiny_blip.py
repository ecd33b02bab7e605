"""A tiny random-weight BLIP captioner saved like a real one (`save_pretrained`), for offline tests."""

from __future__ import annotations

from pathlib import Path

_WORDS = (
    "a an the of in on with and at photo picture image man woman person cat dog cup coffee rocket sky space suit "
    "table red blue green white black orange small large sitting standing holding looking flying launch pad"
).split()


def write_tiny_blip(folder: str | Path, seed: int = 0, mute: bool = False) -> Path:
    """Build and save the model + processor. `mute=True` biases the decoder to end at once, so every caption it
    generates is empty (for the "BLIP produced nothing" path)."""
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,")
    vocab = specials + chars + [f"##{c}" for c in chars] + sorted(set(_WORDS))
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True, bos_token="[DEC]")
    dec_id = vocab.index("[DEC]")
    config = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=16),
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, encoder_hidden_size=32, bos_token_id=dec_id,
                         pad_token_id=vocab.index("[PAD]"), sep_token_id=vocab.index("[SEP]"),
                         eos_token_id=vocab.index("[SEP]"),
                         max_position_embeddings=64),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    if mute:
        with torch.no_grad():
            model.text_decoder.cls.predictions.bias[vocab.index("[SEP]")] = 1e4
    processor = BlipProcessor(BlipImageProcessor(size={"height": 64, "width": 64}), tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
