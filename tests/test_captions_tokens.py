import pytest

from core.tokens import TOKEN_LIMIT, count_tokens, count_tokens_many, token_ids

STRINGS = [
    "a photo of a cat",
    "A Photo, of a CAT!!  (masterpiece:1.2), <lora:thing:0.8>",
    "portrait of sks woman, highly detailed, 8k, trending on artstation, ünïcödé café 東京",
    "",
    " ".join(["smiling"] * 90),
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import CLIPTokenizer

    from core.models.builtin import TOKENIZER_DIR

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


def test_counts_match_transformers_clip_tokenizer(hf_tokenizer):
    for text in STRINGS:
        ids = hf_tokenizer(text, truncation=False)["input_ids"]
        assert ids[0] == 49406 and ids[-1] == 49407
        assert token_ids(text) == ids[1:-1]
        assert count_tokens(text) == len(ids) - 2
    assert count_tokens_many(STRINGS) == [len(hf_tokenizer(t)["input_ids"]) - 2 for t in STRINGS]


def test_known_ids_and_limit():
    assert token_ids("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert count_tokens(" ".join(["smiling"] * 90)) == 90 > TOKEN_LIMIT
    assert count_tokens("") == 0
