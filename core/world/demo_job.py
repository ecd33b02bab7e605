"""The demo job: the shipped "shapes world" model, images of its held-out concept, and a short training config.

`prepare_demo(workdir)` is what `tiwiz demo` and the wizard's demo mode call. This module imports no torch at import
time; the helpers that need it import it inside.
"""

from __future__ import annotations

from pathlib import Path

from core.world import shapes

DEMO_NAME = "demo-heart"
DEMO_STEPS = 300
DEMO_IMAGES = 16
DEMO_SIZE = 64
DEMO_CAPTION = shapes.CONCEPT_NAME
DEMO_TEMPLATE = "[name]\n"
DEMO_MODEL_FOLDER = "shapes-world"  # what the progress lines name the model by
GRID_STEPS = 25  # DDIM steps of each before/after image


def demo_config(model_dir, data_dir, output, *, steps: int = DEMO_STEPS, seed: int = 0) -> dict:
    """The TrainConfig settings of the demo run (a plain dict, so this stays torch- and trainer-free).

    Velocity loss weighting: the concept's flat purple background is decided at the noisiest timesteps, which plain
    MSE barely weighs (the model reads a flat colour off the noisy input at all the others), so without it the
    learned background depended on the seed; lr 0.002 because the world's token vectors are short (norm ~0.25).
    Measured in bench/RESULTS.md."""
    preview_every = max(1, steps // 4)
    return {
        "model": str(model_dir), "data": str(data_dir), "name": DEMO_NAME,
        "init_text": shapes.CONCEPT_INIT_TEXT, "vectors": 2, "steps": steps, "lr": "0.002",
        "loss_weighting": "velocity",
        "batch_size": 4, "width": DEMO_SIZE, "height": DEMO_SIZE, "template": str(Path(data_dir).parent / "template.txt"),
        "save_every": preview_every, "preview_every": preview_every, "validate_every": max(1, steps // 5),
        "validation_images": 4, "output": str(output), "seed": seed, "device": "cpu",
        "preview_prompt": "[name]", "preview_sampler": "ddim", "preview_steps": 20, "preview_cfg": 4.0,
        "preview_seed": 1, "overwrite": True,
    }


def write_concept_images(data_dir, n: int = DEMO_IMAGES, seed: int = 0, size: int = DEMO_SIZE) -> list[Path]:
    """Write `n` PNG images of the held-out concept with same-stem .txt captions."""
    from core.atomic import atomic_write_text, atomic_write_with

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(shapes.concept_samples(seed, n, size=size)):
        path = data_dir / f"{shapes.CONCEPT_SHAPE}-{i:02d}.png"
        atomic_write_with(path, lambda tmp, im=image: im.save(tmp, format="PNG"))
        atomic_write_text(path.with_suffix(".txt"), DEMO_CAPTION + "\n")
        paths.append(path)
    return paths


def prepare_demo(workdir, *, steps: int = DEMO_STEPS, n_images: int = DEMO_IMAGES, seed: int = 0,
                 random_model: bool = False) -> dict:
    """Write `workdir/model` (the demo model), `workdir/data` (the concept's images and captions) and
    `workdir/template.txt`; return `dict(model_dir, data_dir, config)` where `config` is a TrainConfig dict whose
    output is `workdir/run`."""
    from core.atomic import atomic_write_text
    from core.models.builtin import write_demo_model

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = workdir / DEMO_MODEL_FOLDER
    if not (model_dir / "model_index.json").is_file():
        write_demo_model(model_dir, seed=seed, random=random_model)
    data_dir = workdir / "data"
    write_concept_images(data_dir, n_images, seed=seed)
    atomic_write_text(workdir / "template.txt", DEMO_TEMPLATE)
    config = demo_config(model_dir, data_dir, workdir / "run", steps=steps, seed=seed)
    return {"model_dir": model_dir, "data_dir": data_dir, "config": config}


# ---- evaluation helpers (torch inside) ----------------------------------------------------------------------------

def load_pipeline(model_dir):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from core.quiet import quiet_loaded_libraries

    quiet_loaded_libraries()
    pipe = StableDiffusionPipeline.from_pretrained(str(model_dir), local_files_only=True, dtype=torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_vectors(path):
    """The [n, dim] vectors of an embedding file (any layout `core.embeddings.formats` reads)."""
    from core.embeddings.formats import load_embedding

    return load_embedding(path).vectors.float()


def bind_vectors(pipe, token: str, vectors) -> str:
    """Give `vectors` ([n, dim]) to `token` (and `token_1` ... for n > 1) in the pipeline's tokenizer and text
    encoder; returns the text to put in prompts. Cheaper than load_textual_inversion for repeated use."""
    import torch

    names = [token] + [f"{token}_{i}" for i in range(1, len(vectors))]
    new = [n for n in names if n not in pipe.tokenizer.get_vocab()]
    if new:
        pipe.tokenizer.add_tokens(new)
        pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer), mean_resizing=False)
    ids = pipe.tokenizer.convert_tokens_to_ids(names)
    with torch.no_grad():
        pipe.text_encoder.get_input_embeddings().weight[ids] = vectors.to(pipe.text_encoder.dtype)
    return " ".join(names)


def generate(pipe, prompts: list[str], seeds: list[int], *, vectors=None, token: str = "<demo>", steps: int = 25,
             cfg: float = 4.0, size: int = DEMO_SIZE, on_step=None):
    """Generate one image per (prompt, seed); `vectors` ([n, dim]) is bound to `token` in the prompts. `on_step()`
    is called after each denoising step."""
    import torch

    if vectors is not None:
        text = bind_vectors(pipe, token, vectors)
        prompts = [p.replace(token, text) for p in prompts]
    gens = [torch.Generator().manual_seed(s) for s in seeds]

    def stepped(_pipe, _step, _timestep, kwargs):
        on_step()
        return kwargs

    with torch.no_grad():
        return pipe(prompts, generator=gens, num_inference_steps=steps, guidance_scale=cfg, height=size,
                    width=size, callback_on_step_end=stepped if on_step else None).images


def color_histogram(image, bins: int = 4):
    import numpy as np

    arr = np.asarray(image.convert("RGB"), dtype=np.int64) * bins // 256
    idx = (arr[..., 0] * bins + arr[..., 1]) * bins + arr[..., 2]
    hist = np.bincount(idx.ravel(), minlength=bins ** 3).astype(np.float64)
    return hist / hist.sum()


def histogram_distance(images, references) -> float:
    """Mean total-variation distance (0..1) between each image's colour histogram and the references' mean one."""
    import numpy as np

    ref = np.mean([color_histogram(r) for r in references], axis=0)
    return float(np.mean([0.5 * np.abs(color_histogram(im) - ref).sum() for im in images]))


def grid(rows: list[list], cell: int = 64, pad: int = 2):
    """Paste rows of PIL images into one image."""
    from PIL import Image

    ncol = max(len(r) for r in rows)
    out = Image.new("RGB", (ncol * (cell + pad) + pad, len(rows) * (cell + pad) + pad), (128, 128, 128))
    for y, row in enumerate(rows):
        for x, im in enumerate(row):
            out.paste(im.convert("RGB").resize((cell, cell)), (pad + x * (cell + pad), pad + y * (cell + pad)))
    return out


def before_after(model_dir, data_dir, embedding_path, out_png, *, n: int = 8, init_text: str | None = None,
                 n_vectors: int | None = None, threads: int = 0, progress=None) -> dict:
    """Generate `n` images with the init embedding and with the learned one (same seeds), save a grid
    (row 1: training images, row 2: before, row 3: after) to `out_png`, and return the colour distances.
    `threads`: torch's CPU threads (0: the free cores, as the trainer picks them: more threads than free cores make
    OpenMP spin). `progress(done, total)` follows the denoising steps (2 x GRID_STEPS)."""
    from PIL import Image

    from core.atomic import atomic_write_with
    from core.embeddings.vectors import init_vectors
    from core.training.threads import free_cores

    import torch

    torch.set_num_threads(threads or free_cores())
    done = [0]

    def stepped() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], 2 * GRID_STEPS)

    pipe = load_pipeline(model_dir)
    learned = load_vectors(embedding_path)
    n_vectors = n_vectors or learned.shape[0]
    init = init_vectors(pipe.tokenizer, pipe.text_encoder, init_text or shapes.CONCEPT_INIT_TEXT, n_vectors)
    seeds = list(range(1000, 1000 + n))
    prompts = ["<demo>"] * n
    before = generate(pipe, prompts, seeds, vectors=init, steps=GRID_STEPS, on_step=stepped)
    after = generate(pipe, prompts, seeds, vectors=learned, steps=GRID_STEPS, on_step=stepped)
    refs = [Image.open(p).convert("RGB") for p in sorted(Path(data_dir).glob("*.png"))]
    d_before = histogram_distance(before, refs)
    d_after = histogram_distance(after, refs)
    atomic_write_with(out_png, lambda tmp: grid([refs[:n], before, after]).save(tmp, format="PNG"))
    return {"distance_before": d_before, "distance_after": d_after,
            "ratio": d_after / d_before if d_before > 0 else float("nan"), "grid": str(out_png)}
