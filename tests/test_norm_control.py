"""The norm control (core.training.norms) on the tiny models' real text encoders: clamp caps each encoder's vectors
at k times its own vocabulary's mean norm, preserve trains the direction only (a real AdamW step on a real encoder
loss moves the direction and keeps every norm), for SD1's one vector set and SDXL's two."""

import pytest
import torch

from core.models.loader import load_model
from core.training.conditioning import encoder_slots
from core.training.editability import init_text_vectors
from core.training.norms import NormControl, vocabulary_mean_norm
from train_helpers import one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def model(request, tiny_model_dir, tiny_sdxl_dir):
    return load_model(tiny_model_dir if request.param == "sd1" else tiny_sdxl_dir, device="cpu")


@pytest.fixture
def slots(model):
    return encoder_slots(model)


def _encoder_loss(model, parameter):
    """A real loss through the text encoders: the conditioning of a prompt holding the vectors (spliced in as the
    trainer does), against a fixed target."""
    from core.training.editability import model_encoder
    from core.training.splice import PLACEHOLDER, VectorSplice

    tokens = [PLACEHOLDER.format(i) for i in range(parameter.shape[0])]
    splices = []
    for slot in encoder_slots(model):
        slot.tokenizer.add_tokens([t for t in tokens if t not in slot.tokenizer.get_vocab()])
        splices.append(VectorSplice(slot.encoder, slot.tokenizer.convert_tokens_to_ids(tokens), parameter,
                                    columns=slot.columns))
    encode, _ = model_encoder(model, torch.device("cpu"))
    try:
        outputs = encode([" ".join(tokens) + " on a table"])
    finally:
        for splice in splices:
            splice.remove()
    return sum(((out - torch.linspace(-1, 1, out.numel()).reshape(out.shape)) ** 2).mean() for out in outputs)


def test_clamp_caps_each_encoder_at_k_times_its_own_vocabulary(slots):
    init = init_text_vectors(slots, "a dog", 3)
    control = NormControl.for_slots("clamp", 1.5, slots, init)
    assert control.caps() == pytest.approx([1.5 * vocabulary_mean_norm(s.encoder) for s in slots])
    blown = init.clone()
    blown[0] *= 40  # one vector far over the cap in every encoder's columns, the others left alone
    assert control.violation(blown) is not None
    control.apply(blown)
    assert control.violation(blown) is None
    norms = control.norms(blown)
    for j, cap in enumerate(control.caps()):
        assert float(norms[0, j]) == pytest.approx(cap, rel=1e-5)
    assert torch.equal(blown[1:], init[1:])  # under the cap: untouched
    for slot in slots:  # each encoder's direction is kept
        cosine = torch.nn.functional.cosine_similarity(blown[0, slot.columns], init[0, slot.columns], dim=0)
        assert float(cosine) == pytest.approx(1.0, abs=1e-5)


def test_preserve_trains_the_direction_and_keeps_each_norm(model, slots):
    torch.manual_seed(0)
    init = init_text_vectors(slots, "a dog", 2) + 0.01 * torch.randn(2, sum(s.width for s in slots))
    control = NormControl.for_slots("preserve", 2.0, slots, init)
    free = torch.nn.Parameter(init.clone())
    kept = torch.nn.Parameter(init.clone())
    optimizers = [torch.optim.AdamW([p], lr=0.05, weight_decay=0) for p in (free, kept)]
    for _ in range(5):
        for p, opt in zip((free, kept), optimizers):
            opt.zero_grad()
            _encoder_loss(model, p).backward()
            if p is kept:
                control.project_gradient(p)
                radial = (p.grad * p.detach()).sum()
                assert abs(float(radial)) < 1e-4 * float(p.grad.norm() * p.detach().norm())
            opt.step()
            if p is kept:
                control.apply(p)
    before = control.norms(init)
    assert not torch.allclose(control.norms(free), before, rtol=1e-3)  # unconstrained, the norms move
    assert torch.allclose(control.norms(kept), before, rtol=1e-5)
    assert control.violation(kept) is None
    moved = torch.nn.functional.cosine_similarity(kept.detach(), init, dim=1)
    assert float(moved.max()) < 0.9999  # and the direction trained


def test_preserve_gives_a_zero_vector_the_vocabulary_norm_once_it_has_a_direction(slots):
    control = NormControl.for_slots("preserve", 2.0, slots, torch.zeros(1, sum(s.width for s in slots)))
    vectors = torch.zeros(1, sum(s.width for s in slots))
    control.apply(vectors)
    assert torch.equal(vectors, torch.zeros_like(vectors))  # no direction yet: left alone
    vectors += 1e-3
    control.apply(vectors)
    assert control.norms(vectors)[0].tolist() == pytest.approx([vocabulary_mean_norm(s.encoder) for s in slots],
                                                               rel=1e-5)


def test_targets_travel_in_the_state_and_an_older_state_keeps_the_current_norms(slots):
    init = init_text_vectors(slots, "a dog", 2)
    control = NormControl.for_slots("preserve", 2.0, slots, init)
    state = control.state_dict()
    later = init * 3
    fresh = NormControl.for_slots("preserve", 2.0, slots, later)
    fresh.load_state_dict(state, later)
    assert torch.equal(fresh.targets, control.targets)
    for state in (None, {**state, "mode": "free"}):  # an older run, or a run trained free until now
        older = NormControl.for_slots("preserve", 2.0, slots, init)
        older.load_state_dict(state, later)
        assert torch.allclose(older.targets, control.norms(later))


def test_free_changes_nothing(slots):
    init = init_text_vectors(slots, "a dog", 2) * 50
    control = NormControl.for_slots("free", 2.0, slots, init)
    vectors = init.clone()
    control.apply(vectors)
    assert torch.equal(vectors, init) and control.violation(vectors) is None
