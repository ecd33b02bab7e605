"""The wizard with an SDXL model: the model screen names the family (and v-prediction), SDXL defaults (1024 px) are
applied with the reason on the training screen, and the embedding screen explains the two encoders' vectors."""

from __future__ import annotations

import asyncio

import torch
from safetensors.torch import save_file

from tests.tui_support import drive, make_photos, wait_idle
from tui.app import TiwizApp
from tui.state import WizardState

SDXL_HEADER = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
               "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(3, 8),
               "conditioner.embedders.1.model.token_embedding.weight": torch.zeros(3, 8),
               "v_pred": torch.zeros(0)}


def _app(tmp_path, stage, **state):
    return TiwizApp(state=WizardState(**state), save=False, runs_root=tmp_path / "runs", start_stage=stage,
                    finder_roots=[])


def test_model_screen_names_sdxl_and_sets_its_defaults(tmp_path, tiny_sdxl_dir):
    from safetensors.torch import load_file

    from core.models.single_file import save_single_file

    model = save_single_file(tiny_sdxl_dir, tmp_path / "tiny-xl.safetensors")
    save_file({**load_file(str(model)), "v_pred": torch.zeros(0)}, tmp_path / "noob-vpred.safetensors")
    app = _app(tmp_path, "model", model=str(tmp_path / "noob-vpred.safetensors"))

    async def body(pilot):
        for _ in range(50):
            info = str(app.screen.query_one("#model-info").content)
            if info:
                break
            await pilot.pause(0.05)
        assert "SDXL v-prediction" in info and "cannot" not in info
        assert app.screen.check_files() is None
    drive(app, body, (110, 30))
    assert app.state.model_family == "sdxl" and app.state.text_widths == [32, 64]
    assert (app.state.train["width"], app.state.train["height"]) == (1024, 1024)


def test_training_and_embedding_screens_explain_sdxl(tmp_path):
    make_photos(tmp_path / "photos", 2)
    state = dict(model=str(tmp_path / "m"), model_family="sdxl", text_widths=[32, 64], dataset=str(tmp_path / "photos"),
                 name="zxq-cat", init_text="a cat", train={"width": 1024, "height": 1024})
    app = _app(tmp_path, "training", **state)

    async def drive_training():
        async with app.run_test(size=(110, 40)) as pilot:
            await wait_idle(pilot)
            helps = [str(w.content) for w in app.screen.query(".form-help")]
            assert any("SDXL: 1024 (its native size)" in h for h in helps)
            assert any("auto leaves it off where 1024 px fits the GPU's free memory" in h for h in helps)
            assert app.screen.query_one("#tr-width").value == "1024"
    asyncio.run(drive_training())

    app = _app(tmp_path, "embedding", **state)

    async def drive_embedding():
        async with app.run_test(size=(110, 40)) as pilot:
            await wait_idle(pilot)
            plan = str(app.screen.query_one("#emb-plan").content)
            assert "CLIP-L and OpenCLIP bigG" in plan and "clip_l and clip_g" in plan
            assert "a 32-wide CLIP-L part and a 64-wide bigG part" in plan  # the model's widths, not SDXL 1.0's
    asyncio.run(drive_embedding())


def test_finish_screen_shows_the_sdxl_file_and_two_call_diffusers_snippet(tmp_path):
    from core.embeddings.vectors import save_sdxl_embedding
    from tests.tui_support import recorded_events, write_recorded_run

    events = recorded_events("zxqxl", steps=4, max_steps=4, every=2, finished=True)
    for e in events:  # an SDXL run: no .pt anywhere
        if "pt" in e:
            e["pt"] = ""
    run = write_recorded_run(tmp_path / "runs" / "zxqxl-1", events, state="finished")
    save_sdxl_embedding(torch.zeros(1, 768), torch.zeros(1, 1280), run / "zxqxl", name="zxqxl", step=4,
                        base_model="pony.safetensors", base_hash=None, init_text="")
    app = _app(tmp_path, "finish", model="/models/pony.safetensors", model_family="sdxl", name="zxqxl",
               run_dir=str(run))

    async def body(pilot):
        files = str(app.screen.query_one("#fin-files").content)
        assert "clip_l + clip_g" in files and "no .pt" in files and "zxqxl.pt" not in files
        snippet = str(app.screen.query_one("#fin-snippet").content)
        assert "StableDiffusionXLPipeline.from_single_file" in snippet
        assert 'state["clip_g"], token="zxqxl", text_encoder=pipe.text_encoder_2' in snippet
        assert [p.name for p in app.screen.files] == ["zxqxl.safetensors"]
    drive(app, body, (130, 40))
