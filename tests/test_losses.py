"""The losses of Section 3.2 against their defining identities, with autograd on random logits."""

import pytest
import torch
import torch.nn.functional as F

from banets import losses

BATCH, CLASSES = 16, 10


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(BATCH, CLASSES, generator=gen, requires_grad=True)
    teacher = torch.randn(BATCH, CLASSES, generator=gen) * 3
    labels = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    return student, teacher, labels


def grad_of(loss_value, student):
    (grad,) = torch.autograd.grad(loss_value, student)
    return grad


def test_ban_gradient_is_student_minus_teacher_probs_over_batch(batch):
    student, teacher, labels = batch
    grad = grad_of(losses.ban(student, teacher, labels), student)
    expected = (F.softmax(student, -1) - F.softmax(teacher, -1)) / BATCH
    torch.testing.assert_close(grad, expected)


def test_ban_ignores_labels_and_does_not_touch_teacher(batch):
    student, teacher, labels = batch
    teacher = teacher.clone().requires_grad_(True)
    value = losses.ban(student, teacher, labels)
    assert value == losses.ban(student, teacher, (labels + 1) % CLASSES)
    value.backward()
    assert teacher.grad is None


def test_ce_gradient_matches_eq6(batch):
    student, _, labels = batch
    grad = grad_of(losses.ce(student, None, labels), student)
    expected = (F.softmax(student, -1) - F.one_hot(labels, CLASSES)) / BATCH
    torch.testing.assert_close(grad, expected)


def test_ban_l_is_ban_plus_weighted_label_term(batch):
    student, teacher, labels = batch
    value = losses.total(losses.ban_l(student, teacher, labels, label_weight=0.3))
    expected = losses.ban(student, teacher, labels) + 0.3 * F.cross_entropy(student, labels)
    torch.testing.assert_close(value, expected)


def test_ban_at_temperature_t_is_t_squared_times_the_softened_cross_entropy(batch):
    student, teacher, labels = batch
    value = losses.ban(student, teacher, labels, temperature=2.0)
    soft = -(F.softmax(teacher / 2, -1) * F.log_softmax(student / 2, -1)).sum(-1).mean()
    torch.testing.assert_close(value, 4 * soft)
    grad = grad_of(value, student)  # T^2 keeps the gradient's size: T (softmax(z/T) - softmax(t/T)) / batch
    torch.testing.assert_close(grad, 2 * (F.softmax(student / 2, -1) - F.softmax(teacher / 2, -1)) / BATCH)
    assert losses.ban(student, teacher, labels, temperature=1.0) == losses.ban(student, teacher, labels)


@pytest.mark.parametrize("progress, teacher_weight", [(0.0, 1.0), (0.25, 0.75), (1.0, 0.0)])
def test_teacher_annealing_moves_the_weight_from_the_teacher_to_the_labels(batch, progress, teacher_weight):
    student, teacher, labels = batch
    terms = losses.ban_l(student, teacher, labels, anneal=True, progress=progress)
    torch.testing.assert_close(terms["teacher"], teacher_weight * losses.ban(student, teacher, labels))
    torch.testing.assert_close(terms["label"], (1 - teacher_weight) * F.cross_entropy(student, labels))


def test_the_engine_gives_a_loss_that_takes_it_the_fraction_of_the_training_done():
    from banets.config import TrainConfig
    from banets.data.batches import TensorBatches
    from banets.engine import Trainer

    seen = []

    def annealed(student, teacher, labels, progress):
        seen.append(progress)
        return F.cross_entropy(student, labels)

    x, y = torch.randn(12, 3), torch.randint(0, 2, (12,))
    trainer = Trainer(torch.nn.Linear(3, 2), annealed, TrainConfig(epochs=2, progress="none"), seed=0,
                      device=torch.device("cpu"))
    trainer.fit(TensorBatches(x, y, batch_size=4))
    assert seen == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])


def test_kd_reduces_to_ban_at_temperature_one_without_labels(batch):
    student, teacher, labels = batch
    value = losses.total(losses.kd(student, teacher, labels, temperature=1.0, label_weight=0.0))
    torch.testing.assert_close(value, losses.ban(student, teacher, labels))


def test_kd_gradient_has_temperature_scaling(batch):
    student, teacher, labels = batch
    temperature = 4.0
    grad = grad_of(losses.total(losses.kd(student, teacher, labels, temperature=temperature, label_weight=0.0)), student)
    expected = temperature * (F.softmax(student / temperature, -1) - F.softmax(teacher / temperature, -1)) / BATCH
    torch.testing.assert_close(grad, expected)


def test_cwtm_weights_are_teacher_max_prob_normalised(batch):
    _, teacher, _ = batch
    weights = losses.cwtm_weights(teacher)
    confidence = F.softmax(teacher, -1).max(-1).values
    torch.testing.assert_close(weights, confidence / confidence.sum())
    assert torch.isclose(weights.sum(), torch.tensor(1.0))


def test_cwtm_gradient_matches_eq10(batch):
    student, teacher, labels = batch
    grad = grad_of(losses.cwtm(student, teacher, labels), student)
    weights = losses.cwtm_weights(teacher)[:, None]
    expected = weights * (F.softmax(student, -1) - F.one_hot(labels, CLASSES))
    torch.testing.assert_close(grad, expected)


def test_cwtm_uses_no_non_argmax_information(batch):
    """Changing the teacher's non-argmax logits while keeping its max probability leaves CWTM unchanged."""
    student, teacher, labels = batch
    probs = F.softmax(teacher, -1)
    shuffled = losses.permute_non_argmax(probs, torch.Generator().manual_seed(1))
    value = losses.cwtm(student, teacher, labels)
    torch.testing.assert_close(losses.cwtm(student, shuffled.log(), labels), value)


def test_permute_non_argmax_keeps_argmax_and_multiset_and_moves_entries():
    probs = F.softmax(torch.randn(64, CLASSES, generator=torch.Generator().manual_seed(2)), -1)
    permuted = losses.permute_non_argmax(probs, torch.Generator().manual_seed(3))
    rows = torch.arange(64)
    argmax = probs.argmax(-1)
    assert torch.equal(permuted.argmax(-1), argmax)
    assert torch.equal(permuted[rows, argmax], probs[rows, argmax])
    assert torch.equal(permuted.sort(-1).values, probs.sort(-1).values)
    moved = (permuted != probs).float().mean()
    assert moved > 0.7  # a random permutation of 9 entries leaves about 1 in 9 in place


def test_dkpp_is_reproducible_under_a_seed(batch):
    student, teacher, labels = batch
    values = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        values.append(losses.get("dkpp")(student, teacher, labels))
    assert values[0] == values[1]
    assert values[0] != values[2]


def test_dkpp_gradient_targets_the_permuted_teacher(batch):
    student, teacher, labels = batch
    grad = grad_of(losses.dkpp(student, teacher, labels, torch.Generator().manual_seed(5)), student)
    target = losses.permute_non_argmax(F.softmax(teacher, -1), torch.Generator().manual_seed(5))
    torch.testing.assert_close(grad, (F.softmax(student, -1) - target) / BATCH)


@pytest.mark.parametrize("name", losses.names())
def test_losses_flatten_sequence_logits(name, batch):
    """A (N, T, V) language-model batch gives the loss of the flattened (N*T, V) logits."""
    student, teacher, labels = batch
    torch.manual_seed(0)  # dkpp draws its permutation from the global generator
    flat = losses.get(name)(student, teacher, labels)
    torch.manual_seed(0)
    unrolled = losses.get(name)(student.view(4, 4, CLASSES), teacher.view(4, 4, CLASSES), labels.view(4, 4))
    torch.testing.assert_close(unrolled, flat)


@pytest.mark.parametrize("name", losses.names())
def test_losses_finite_for_extreme_logits_float32(name):
    gen = torch.Generator().manual_seed(4)
    student = (torch.randn(BATCH, CLASSES, generator=gen).sign() * 1e4).requires_grad_(True)
    teacher = -student.detach()
    labels = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    value = losses.total(losses.get(name)(student, teacher, labels))
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize("name", losses.names())
def test_losses_finite_under_bf16_autocast(name):
    gen = torch.Generator().manual_seed(6)
    layer = torch.nn.Linear(8, CLASSES)
    with torch.no_grad():
        layer.weight.mul_(1e3)
    inputs = torch.randn(BATCH, 8, generator=gen) * 10
    labels = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student = layer(inputs)
        teacher = -student.detach()
        value = losses.total(losses.get(name)(student, teacher, labels))
    assert student.dtype == torch.bfloat16
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_get_rejects_unknown_names_and_options():
    with pytest.raises(losses.LossError, match="unknown loss 'bann'; did you mean 'ban'"):
        losses.get("bann")
    with pytest.raises(losses.LossError, match="temprature"):
        losses.get("kd", temprature=2.0)
    with pytest.raises(losses.LossError, match="cannot be imported"):
        losses.get("no_such_module:focal")


@pytest.mark.parametrize("name, options, message", [
    ("ce", {"label_smoothing": 2}, "label_smoothing must be between 0 and 1, got 2"),
    ("ban+l", {"label_weight": -1}, "ban\\+l takes a label_weight of 0 or more and a temperature above 0, got -1"),
    ("ban+l", {"anneal": True, "label_weight": 0.5}, "ban\\+l with anneal sets the teacher's and the label's weights"),
    ("ban", {"temperature": 0}, "ban takes a temperature above 0, got 0"),
    ("ban+l", {"anneal": True, "progress": 0.5}, "progress is not an option: the engine gives it at every step"),
    ("kd", {"temperature": 0}, "kd takes a temperature above 0 and a label_weight in \\[0, 1\\], got 0 and 0.1"),
    ("kd", {"temperature": "hot"}, "loss 'kd' takes numbers for its options"),
])
def test_options_out_of_range_fail_when_bound_not_per_step(name, options, message):
    with pytest.raises(losses.LossError, match=message):
        losses.get(name, **options)


def test_bound_options_are_checked_once_not_per_step(batch, monkeypatch):
    student, teacher, labels = batch
    checked = []
    monkeypatch.setitem(losses._OPTION_CHECKS, losses.kd, lambda **options: checked.append(options))
    loss = losses.get("kd", temperature=2.0)
    for _ in range(3):
        assert torch.isfinite(losses.total(loss(student, teacher, labels)))
    assert checked == [{"temperature": 2.0, "label_weight": 0.1}]


def test_distillation_losses_need_a_teacher(batch):
    student, _, labels = batch
    with pytest.raises(ValueError, match="teacher"):
        losses.ban(student, None, labels)


def masked_permutation(probs, generator):
    """DKPP's permutation as first written, with boolean-mask indexing (a host sync on a GPU): the reference."""
    rows, classes = probs.shape
    others_mask = torch.ones_like(probs, dtype=torch.bool).scatter_(1, probs.argmax(-1, keepdim=True), False)
    others = probs[others_mask].view(rows, classes - 1)
    keys = torch.rand(others.shape, generator=generator)
    permuted = probs.clone()
    permuted[others_mask] = others.gather(1, keys.argsort(dim=1)).reshape(-1)
    return permuted


def test_permute_non_argmax_equals_the_masked_reference_bit_for_bit():
    probs = F.softmax(torch.randn(64, CLASSES, generator=torch.Generator().manual_seed(9)) * 3, -1)
    probs[0] = probs[0].roll(-int(probs[0].argmax()))  # argmax in the first column
    probs[1] = probs[1].roll(CLASSES - 1 - int(probs[1].argmax()))  # and in the last
    permuted = losses.permute_non_argmax(probs, torch.Generator().manual_seed(10))
    assert torch.equal(permuted, masked_permutation(probs, torch.Generator().manual_seed(10)))
