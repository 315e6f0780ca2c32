"""The training objectives of Born Again Networks (Furlanello et al., 2018, Section 3.2).

Every loss takes ``(student_logits, teacher_logits, labels)`` and returns a scalar mean over the batch, or, when it
has several terms (BAN+L's teacher and label terms, KD's), a dict of them by name, which :func:`total` sums: the
engine logs each term per epoch (``train_loss_teacher``, ``train_loss_label``) beside the total ``train_loss``.
Logits may have any leading shape ``(..., C)`` (an image batch ``(N, C)`` or an unrolled language-model
batch ``(N, T, V)``); they are flattened to ``(-1, C)`` and computed in float32, so the losses stay
finite for extreme logits and under bf16 autocast. Teacher outputs never receive gradients.

Positions whose label is :data:`IGNORE_INDEX` (-100, PyTorch's and Hugging Face's mark of padding) never reach a
loss: the engine takes them out with :func:`real_positions` first, for the built-in losses and yours alike, so a
mean is over real tokens only.

``get(name, **options)`` returns the loss registered under ``name``: ``"ce"``, ``"kd"``, ``"ban"``,
``"ban+l"``, ``"cwtm"``, ``"dkpp"``, or any added with ``register``; a callable with the same signature
is accepted wherever a name is.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from banets.config import UserError, did_you_mean, qualified_name
from banets.user_code import SetupError, imported_function

IGNORE_INDEX = -100  # a label that marks a position no loss or metric sees (padding)
PROGRESS = "progress"  # a loss's keyword parameter that the engine fills: the fraction of the training done
Terms = dict[str, Tensor]  # a loss's terms by name, which sum to it
Loss = Callable[[Tensor, Tensor | None, Tensor], Tensor | Terms]


def total(value: Tensor | Terms) -> Tensor:
    """A loss's value: the sum of its terms, in order, when it returns them by name."""
    if not isinstance(value, dict):
        return value
    if not value:
        raise LossError("a loss returned no terms; return a scalar tensor, or a dict of named scalar terms")
    terms = iter(value.values())
    result = next(terms)
    for term in terms:
        result = result + term
    return result


def real_positions(
    student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The logits ``(M, C)`` and labels ``(M,)`` of the positions whose label is not :data:`IGNORE_INDEX`."""
    keep = (labels != IGNORE_INDEX).reshape(-1)
    flat = [None if z is None else z.reshape(-1, z.shape[-1])[keep] for z in (student_logits, teacher_logits)]
    return flat[0], flat[1], labels.reshape(-1)[keep]  # type: ignore[return-value]


def _flat(logits: Tensor) -> Tensor:
    return logits.reshape(-1, logits.shape[-1]).float()


def _teacher_probs(teacher_logits: Tensor | None, temperature: float = 1.0) -> Tensor:
    if teacher_logits is None:
        raise ValueError("this loss distils from a teacher, but no teacher logits were given")
    return F.softmax(_flat(teacher_logits.detach()) / temperature, dim=-1)


def _soft_cross_entropy(student_logits: Tensor, target_probs: Tensor) -> Tensor:
    """Mean over samples of ``-sum_i p_i log q_i`` with ``q = softmax(student_logits)``."""
    return -(target_probs * F.log_softmax(_flat(student_logits), dim=-1)).sum(-1).mean()


def ce(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Label cross-entropy, the teacher's ERM objective (Eq. 1); ``label_smoothing`` gives the control run."""
    return F.cross_entropy(_flat(student_logits), labels.reshape(-1), label_smoothing=label_smoothing)


def ban(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """Cross-entropy between the teacher's and the student's softmax, labels unused (Eq. 2 and 3).

    Its gradient w.r.t. the student logits is ``(softmax(z) - softmax(t)) / batch`` (Eq. 5). ``temperature`` T
    softens both softmaxes, the cross-entropy scaled by T² as in Hinton et al. (2015) so that its gradient keeps its
    size; the paper uses T = 1.
    """
    soft_targets = _teacher_probs(teacher_logits, temperature)
    return _soft_cross_entropy(student_logits / temperature, soft_targets) * temperature**2


def ban_l(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor, label_weight: float = 1.0,
          normalize: bool = False, temperature: float = 1.0, anneal: bool = False, progress: float = 0.0) -> Terms:
    """BAN+L: the ``ban`` term (``teacher``, at ``temperature``) plus ``label_weight`` times the label
    cross-entropy (``label``) (Table 2, "BAN+L").

    Its gradient is the sum of two cross-entropies' gradients, about ``1 + label_weight`` times the teacher's at the
    same learning rate; ``normalize`` divides both terms by ``1 + label_weight``, a weighted mean of the two.
    ``anneal``: teacher annealing (Clark et al. 2019, BAM!), the teacher's weight falling from 1 to 0 over the
    training as the label's rises from 0 to 1, by ``progress``, the fraction of the training done (the engine
    gives it to every loss that takes it).
    """
    teacher_weight, label_weight = (1.0 - progress, progress) if anneal else (1.0, label_weight)
    scale = 1.0 / (teacher_weight + label_weight) if normalize else 1.0
    return {"teacher": scale * teacher_weight * ban(student_logits, teacher_logits, labels, temperature),
            "label": scale * label_weight * ce(student_logits, None, labels)}


def call(loss: Loss, student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor,
         progress: float) -> Tensor | Terms:
    """``loss`` on one batch; a loss with a ``progress`` parameter (teacher annealing) is also given the fraction of
    the training done, 0 at the first step."""
    if PROGRESS in inspect.signature(loss).parameters:
        return loss(student_logits, teacher_logits, labels, **{PROGRESS: progress})
    return loss(student_logits, teacher_logits, labels)


def kd(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    temperature: float = 4.0,
    label_weight: float = 0.1,
) -> Terms:
    """Hinton et al. (2015) distillation, for comparison: softened cross-entropy scaled by ``T**2``.

    ``(1 - label_weight) * T^2 * CE(softmax(t/T), softmax(z/T))`` (``teacher``) ``+ label_weight * CE(labels, z)``
    (``label``).
    """
    soft = ban(student_logits, teacher_logits, labels, temperature)
    return {"teacher": (1.0 - label_weight) * soft, "label": label_weight * ce(student_logits, None, labels)}


def cwtm_weights(teacher_logits: Tensor | None) -> Tensor:
    """Per-sample weights of CWTM: the teacher's max probability, normalised to sum 1 over the batch."""
    confidence = _teacher_probs(teacher_logits).max(dim=-1).values
    return confidence / confidence.sum()


def cwtm(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor) -> Tensor:
    """Confidence Weighted by Teacher Max (Eq. 10).

    Label cross-entropy with sample ``s`` weighted by ``max_i p_{i,s} / sum_u max_i p_{i,u}``: the
    teacher's non-argmax outputs carry no information to the student.
    """
    per_sample = F.cross_entropy(_flat(student_logits), labels.reshape(-1), reduction="none")
    return (cwtm_weights(teacher_logits) * per_sample).sum()


def permute_non_argmax(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Permute every entry of each row except its argmax, independently per row (DKPP's ``phi``).

    The non-argmax columns are found arithmetically (column ``k`` of the ``C - 1`` others is ``k``, or ``k + 1``
    from the argmax on), not by boolean-mask indexing, whose data-dependent size would make the host wait for
    the device at every step.
    """
    classes = probs.shape[-1]
    argmax = probs.argmax(dim=-1, keepdim=True)
    rank = torch.arange(classes - 1, device=probs.device)
    others = rank + (rank >= argmax)  # (rows, C - 1): each row's non-argmax columns, in order
    keys = torch.rand(others.shape, generator=generator, device=_generator_device(generator, probs))
    shuffled = probs.gather(1, others.gather(1, keys.to(probs.device).argsort(dim=1)))
    return probs.scatter(1, others, shuffled)


def _generator_device(generator: torch.Generator | None, like: Tensor) -> torch.device:
    return generator.device if generator is not None else like.device


def dkpp(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Dark Knowledge with Permuted Predictions (Eq. 11).

    The student matches the teacher's distribution after all its non-argmax entries are permuted at
    random per sample; the argmax entry keeps its place and value, so only the permutation-invariant
    moments of the dark knowledge survive. Labels unused. The permutation is drawn from ``generator``, or
    from torch's global generator, which the engine reseeds every epoch from the model's seed.
    """
    probs = _teacher_probs(teacher_logits)
    return _soft_cross_entropy(student_logits, permute_non_argmax(probs, generator))


def _check_ce(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing <= 1.0:
        raise LossError(f"label_smoothing must be between 0 and 1, got {label_smoothing}")


def _check_ban(temperature: float) -> None:
    if not temperature > 0:
        raise LossError(f"ban takes a temperature above 0, got {temperature}")


def _check_ban_l(label_weight: float, normalize: bool, temperature: float, anneal: bool, progress: float) -> None:
    if not (label_weight >= 0 and temperature > 0):
        raise LossError(f"ban+l takes a label_weight of 0 or more and a temperature above 0, got {label_weight} and "
                        f"{temperature}")
    if anneal and (label_weight != 1.0 or normalize):
        raise LossError("ban+l with anneal sets the teacher's and the label's weights itself (1 - progress and "
                        "progress): leave label_weight and normalize out")


def _check_kd(temperature: float, label_weight: float) -> None:
    if not (temperature > 0 and 0.0 <= label_weight <= 1.0):
        raise LossError(
            f"kd takes a temperature above 0 and a label_weight in [0, 1], got {temperature} and {label_weight}"
        )


# The built-in losses' option ranges, checked once when the options are bound, not on every training step.
_OPTION_CHECKS: dict[Callable, Callable[..., None]] = {ce: _check_ce, ban: _check_ban, ban_l: _check_ban_l,
                                                       kd: _check_kd}


def _with_options(fn: Callable[..., Tensor | Terms], name: str) -> Callable[..., Loss]:
    """A factory binding keyword options to ``fn``; unknown options and, for the built-in losses, options out of
    range fail here, before any training."""

    def factory(**options) -> Loss:
        try:
            if PROGRESS in options:
                raise TypeError(f"{PROGRESS} is not an option: the engine gives it at every step")
            bound = inspect.signature(fn).bind(None, None, None, **options)
        except TypeError as error:
            takes = [name for name in list(inspect.signature(fn).parameters)[3:] if name != PROGRESS]
            raise LossError(
                f"loss {name!r} takes (student_logits, teacher_logits, labels) and the options "
                f"{', '.join(takes) or 'none'}: {error}"
            ) from None
        if fn in _OPTION_CHECKS:
            bound.apply_defaults()
            _check_values(name, _OPTION_CHECKS[fn], dict(list(bound.arguments.items())[3:]))
        return functools.partial(fn, **options) if options else fn

    factory.__wrapped_loss__ = fn  # type: ignore[attr-defined]
    return factory


def _check_values(name: str, check: Callable[..., None], options: dict) -> None:
    try:
        check(**options)
    except TypeError:  # an option of the wrong type, e.g. a temperature of "hot"
        raise LossError(f"loss {name!r} takes numbers for its options, got {options}") from None


class LossError(UserError, ValueError):
    """A loss that cannot be used as given (unknown name, bad options, not a callable); one line."""


_LOSSES: dict[str, Callable[..., Loss]] = {}


def register(name: str, fn: Callable[..., Tensor | Terms] | None = None):
    """Register ``fn`` (``(student_logits, teacher_logits, labels, **options) -> scalar or terms``) under ``name``,
    so that configs can name it (``ban.loss: name``); usable as ``@losses.register("name")``."""

    def add(loss: Callable[..., Tensor | Terms]) -> Callable[..., Tensor | Terms]:
        wrapped = getattr(_LOSSES.get(name), "__wrapped_loss__", None)
        if name in _LOSSES and qualified_name(wrapped) != qualified_name(loss):  # a cell run again: same function
            raise LossError(f"loss {name!r} is registered twice; choose another name")
        _LOSSES[name] = _with_options(loss, name)
        return loss

    return add(fn) if fn is not None else add


for _name, _fn in (("ce", ce), ("kd", kd), ("ban", ban), ("ban+l", ban_l), ("cwtm", cwtm), ("dkpp", dkpp)):
    register(_name, _fn)


def names() -> list[str]:
    """Names accepted by :func:`get`."""
    return list(_LOSSES)


def name_of(loss: str | Callable) -> str:
    """How a plan and a config name ``loss``: its registered name, else ``module:function`` for a callable."""
    if isinstance(loss, str):
        return loss
    for name, factory in _LOSSES.items():
        if getattr(factory, "__wrapped_loss__", None) is loss:
            return name
    return qualified_name(loss.func if isinstance(loss, functools.partial) else loss)


def get(loss: str | Callable, **options) -> Loss:
    """``loss`` as a callable ``(student_logits, teacher_logits, labels) -> scalar``, its ``options`` bound.

    ``loss`` is a registered name (:func:`names`), ``"module:function"`` (imported), or a callable itself.
    """
    if callable(loss):
        return _with_options(loss, name_of(loss))(**options)
    if not isinstance(loss, str):
        raise LossError(
            f"a loss is a name or a callable (student_logits, teacher_logits, labels) -> scalar, not {loss!r}"
        )
    if loss in _LOSSES:
        return _LOSSES[loss](**options)
    if ":" in loss:
        try:
            return get(imported_function(loss, "loss"), **options)
        except SetupError as error:
            raise LossError(str(error)) from None
    hint = f"{did_you_mean(loss, _LOSSES)} ".lstrip()
    raise LossError(
        f"unknown loss {loss!r}; {hint}choose one of {', '.join(_LOSSES)}, module:function, "
        f"or register your own with banets.losses.register"
    )

