"""The trainer's per-step host work: prompts are tokenised once per distinct prompt, and a step whose prompts hold no
trigger applies nothing (the vector splice no longer asks the GPU whether a placeholder is there, so the trainer
decides it on the host)."""

import pytest
import torch

import core.training.conditioning as conditioning
from core.training import update
from core.events import ListSink
from core.training.trainer import Trainer
from train_helpers import make_images, tiny_config, one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_distinct_prompt_is_tokenised_once(tiny_model_dir, tmp_path, monkeypatch):
    data = make_images(tmp_path / "data", n=2)
    tokenised = []
    real = conditioning.token_ids

    def counting(tokenizer, prompts, device):
        tokenised.extend(prompts)
        return real(tokenizer, prompts, device)

    monkeypatch.setattr(conditioning, "token_ids", counting)
    template = tmp_path / "two.txt"
    template.write_text("a photo of [name]\na painting of [name]\n", encoding="utf-8")
    cfg = tiny_config(tiny_model_dir, data, steps=12, template=str(template))
    summary = Trainer(cfg, tmp_path / "out", ListSink()).run()
    assert summary.step == 12
    assert tokenised and len(tokenised) == len(set(tokenised))
    # 12 steps, 2 template lines (no [filewords]); the editability probe's init-text prompt is the only other one
    assert {p for p in tokenised if "<tiwiz-vec-0>" in p} == {"a photo of <tiwiz-vec-0>", "a painting of <tiwiz-vec-0>"}


def test_a_step_whose_prompts_hold_no_trigger_changes_nothing(tiny_model_dir, tmp_path, monkeypatch):
    data = make_images(tmp_path / "data", n=2)
    template = tmp_path / "mixed.txt"
    template.write_text("a photo of [name]\nplain words only\n", encoding="utf-8")
    cfg = tiny_config(tiny_model_dir, data, steps=10, lr="0.05", template=str(template))
    steps = []  # (trigger seen, vectors before, vectors after, Adam's step count after)

    real = update.train_step

    def recording(s, lr, stop_between):
        before = s.vectors.detach().clone()
        out = real(s, lr, stop_between)
        state = s.optimizer.state.get(s.vectors, {})
        steps.append((s.tokens.seen, before, s.vectors.detach().clone(), int(state["step"]) if "step" in state else 0))
        return out

    monkeypatch.setattr(update, "train_step", recording)
    summary = Trainer(cfg, tmp_path / "out", ListSink()).run()
    assert summary.step == 10
    seen = [s for s in steps if s[0]]
    unseen = [s for s in steps if not s[0]]
    assert seen and unseen, "the seed should draw both template lines"
    assert all(torch.equal(before, after) for _, before, after, _ in unseen)
    assert all(not torch.equal(before, after) for _, before, after, _ in seen)
    assert steps[-1][3] == len(seen)  # the optimizer counted only the steps that trained
