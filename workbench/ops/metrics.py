"""Metrics: functions of the last position's logits [B, V] -> [B]."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import TokenizationError, WorkbenchError
from ..validate import as_int, check_text

BoundMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Metric:
    """A named metric; `bind(model)` resolves tokens and returns fn(logits [B, V], clean_logits [V]) -> [B]."""

    name = "metric"
    needs_clean = False

    def bind(self, model: Any) -> BoundMetric:
        raise NotImplementedError

    def code(self, model: Any) -> str:
        """Python source of `def metric(logits, clean_logits)` for generated code."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name

    def for_example(self, i: int, example: Any) -> Metric:
        """This metric for example `i` of a dataset (the example's own target/foil where it reads them)."""
        return self

    @property
    def per_example(self) -> bool:
        """Whether the metric reads each example's answer (no tokens given, or one list per example)."""
        return False


Token = str | int | None | tuple[str | int, ...]  # None: the dataset's own; a tuple: one per example


def _shown(value: Token) -> str:
    if value is None:
        return "each example's"
    if isinstance(value, tuple):
        return f"[{len(value)} tokens, one per example]"
    return repr(value)


def _pick(value: Token, i: int, example: Any, key: str, what: str) -> str | int:
    """The token of example i: its own (value None) or the i-th of a per-example list."""
    if value is None:
        own = getattr(example, key, None)
        if own is None:
            raise WorkbenchError(
                f"The metric reads each example's {key}, but example {i} has none: give the Dataset {key}=, or "
                f"pass the {what} to the metric."
            )
        return own
    if isinstance(value, tuple):
        if i >= len(value):
            raise WorkbenchError(
                f"The metric has {len(value)} {what}s (one per example), but the dataset has more examples: give "
                "one per example."
            )
        return value[i]
    return value


def _single(value: Token, key: str) -> str | int:
    if value is None or isinstance(value, tuple):
        fix = (
            f"the metric has no {key} of its own: it reads each example's {key} from a wb.Dataset"
            if value is None
            else f"the metric has one {key} per example (a list): it needs a wb.Dataset of as many examples"
        )
        raise WorkbenchError(
            f"For one prompt, give the metric its tokens, e.g. wb.logit_diff(' Paris', ' Rome'); {fix}."
        )
    return value


@dataclass(frozen=True, repr=False)
class LogitDiff(Metric):
    target: Token
    foil: Token
    needs_clean = False

    @property
    def per_example(self) -> bool:  # type: ignore[override]
        return any(v is None or isinstance(v, tuple) for v in (self.target, self.foil))

    def for_example(self, i: int, example: Any) -> Metric:
        return LogitDiff(
            _pick(self.target, i, example, "target", "target token"),
            _pick(self.foil, i, example, "foil", "foil token"),
        )

    @property
    def name(self) -> str:  # type: ignore[override]
        if self.target is None and self.foil is None:
            return "logit_diff()"
        return f"logit_diff({_shown(self.target)}, {_shown(self.foil)})"

    def bind(self, model: Any) -> BoundMetric:
        t, f = model.token_id(_single(self.target, "target")), model.token_id(_single(self.foil, "foil"))
        return lambda logits, clean=None: logits[:, t] - logits[:, f]

    def code(self, model: Any) -> str:
        if self.per_example:
            return (
                "def metric(logits, clean_logits=None):  # logit difference of each example's target - foil\n"
                "    return logits[:, target] - logits[:, foil]  # target, foil: this example's token ids\n"
            )
        t, f = model.token_id(_single(self.target, "target")), model.token_id(_single(self.foil, "foil"))
        return (
            f"def metric(logits, clean_logits=None):  # logit difference {self.target!r} - {self.foil!r}\n"
            f"    return logits[:, {t}] - logits[:, {f}]\n"
        )


@dataclass(frozen=True, repr=False)
class Prob(Metric):
    token: Token
    log: bool = False

    @property
    def per_example(self) -> bool:  # type: ignore[override]
        return self.token is None or isinstance(self.token, tuple)

    def for_example(self, i: int, example: Any) -> Metric:
        return Prob(_pick(self.token, i, example, "target", "token"), self.log)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{'logprob' if self.log else 'prob'}({'' if self.token is None else _shown(self.token)})"

    def bind(self, model: Any) -> BoundMetric:
        t = model.token_id(_single(self.token, "target"))
        if self.log:
            return lambda logits, clean=None: torch.log_softmax(logits, dim=-1)[:, t]
        return lambda logits, clean=None: torch.softmax(logits, dim=-1)[:, t]

    def code(self, model: Any) -> str:
        fn = "log_softmax" if self.log else "softmax"
        if self.per_example:
            return (
                f"def metric(logits, clean_logits=None):  # {self.name}: each example's target\n"
                f"    return torch.{fn}(logits, dim=-1)[:, target]  # target: this example's token id\n"
            )
        t = model.token_id(_single(self.token, "target"))
        return (
            f"def metric(logits, clean_logits=None):  # {self.name}\n"
            f"    return torch.{fn}(logits, dim=-1)[:, {t}]\n"
        )


class KLToClean(Metric):
    """KL(clean || run) of the next-token distributions; 0 when the run matches the clean run."""

    name = "kl_to_clean()"
    needs_clean = True

    def bind(self, model: Any) -> BoundMetric:
        def kl(logits: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
            lp = torch.log_softmax(logits, dim=-1)
            lc = torch.log_softmax(clean, dim=-1).unsqueeze(0)
            return (lc.exp() * (lc - lp)).sum(-1)

        return kl

    def code(self, model: Any) -> str:
        return (
            "def metric(logits, clean_logits):  # KL(clean || run)\n"
            "    lp, lc = torch.log_softmax(logits, -1), torch.log_softmax(clean_logits, -1).unsqueeze(0)\n"
            "    return (lc.exp() * (lc - lp)).sum(-1)\n"
        )


def _safe_name(fn: Any) -> str:
    """A callable's name fit for messages and generated code: one line of identifier-ish characters."""
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str):
        name = type(fn).__name__
    name = re.sub(r"[^0-9A-Za-z_<>.]+", "_", name)[:60].strip("_")
    return name or "custom"


class CustomMetric(Metric):
    """A user callable(logits [B, V]) -> [B] (or a scalar for B == 1)."""

    def __init__(self, fn: Callable[[torch.Tensor], Any]) -> None:
        self.fn = fn
        self.name = _safe_name(fn)

    def bind(self, model: Any) -> BoundMetric:
        fn, name = self.fn, self.name
        rule = "it must return one number per row of logits: a float tensor of shape [B] (or a scalar for B == 1)"

        def call(logits: torch.Tensor, clean: torch.Tensor | None = None) -> torch.Tensor:
            try:
                out = fn(logits)
            except WorkbenchError:
                raise
            except Exception as exc:
                raise WorkbenchError(
                    f"The metric {name} raised {type(exc).__name__}: {exc}. It is called with the last "
                    f"position's logits, a float tensor of shape {tuple(logits.shape)} [B, vocab]."
                ) from exc
            if out is None or isinstance(out, str | bytes | dict | set):
                raise WorkbenchError(f"The metric {name} returned {type(out).__name__}; {rule}.")
            if not isinstance(out, torch.Tensor):
                try:
                    out = torch.as_tensor(out, dtype=logits.dtype)
                except (TypeError, ValueError, RuntimeError):
                    raise WorkbenchError(
                        f"The metric {name} returned {type(out).__name__}; {rule}."
                    ) from None
            if out.dtype == torch.bool or out.is_complex():
                raise WorkbenchError(f"The metric {name} returned a tensor of dtype {out.dtype}; {rule}.")
            if not out.is_floating_point():
                out = out.to(logits.dtype)
            if out.dim() == 0:
                out = out.expand(logits.shape[0]) if logits.shape[0] == 1 else out
            if out.shape != (logits.shape[0],):
                raise WorkbenchError(
                    f"The metric {name} returned shape {tuple(out.shape)} for logits of shape "
                    f"{tuple(logits.shape)}; it must return one number per row, shape ({logits.shape[0]},)."
                )
            if logits.requires_grad and torch.is_grad_enabled() and not out.requires_grad:
                raise WorkbenchError(
                    f"The metric {name} is not differentiable, which attribution patching needs: its result "
                    "has no gradient with respect to the logits. Compute it with torch operations on `logits` "
                    "(no .item(), .tolist(), numpy, argmax or comparisons, no torch.no_grad()); or use "
                    "wb.patch_sweep, which needs no gradient."
                )
            return out

        return call

    def code(self, model: Any) -> str:
        return (
            f"def metric(logits, clean_logits=None):  # your own metric ({self.name}): logits [B, V] -> [B]\n"
            f"    raise NotImplementedError('paste the body of your metric {self.name} here')\n"
        )


def _token(token: Any, what: str) -> Token:
    """A metric token as text (checked to be encodable) or a plain int id (numpy / 0-d tensor ids accepted);
    None (each example's own, from a Dataset) or a list (one per example) stay as None / a tuple."""
    if token is None:
        return None
    if isinstance(token, list | tuple) or (hasattr(token, "tolist") and getattr(token, "ndim", 0) == 1):
        items = token.tolist() if hasattr(token, "tolist") else list(token)
        if not items:
            raise WorkbenchError(f"The {what} list is empty: give one token per example.")
        return tuple(_token(t, what) for t in items)  # type: ignore[misc]
    if isinstance(token, str):
        return check_text(token, what)
    return as_int(
        token,
        f"The {what} id",
        error=TokenizationError,
        hint=" Give a token as text (e.g. ' Paris') or as an integer id.",
    )


def logit_diff(target: Any = None, foil: Any = None) -> Metric:
    """Logit of `target` minus logit of `foil` at the last position (each exactly one token). Over a
    Dataset, with no tokens each example's own target/foil; a list gives one token per example."""
    return LogitDiff(_token(target, "target token"), _token(foil, "foil token"))


def prob(token: Any = None) -> Metric:
    """Probability of `token` at the last position (over a Dataset: by default each example's target)."""
    return Prob(_token(token, "metric token"))


def logprob(token: Any = None) -> Metric:
    """Log-probability of `token` at the last position (over a Dataset: by default each example's target)."""
    return Prob(_token(token, "metric token"), log=True)


def kl_to_clean() -> Metric:
    """KL divergence from the clean run's next-token distribution (needs a clean run: patching)."""
    return KLToClean()


def as_metric(metric: Metric | Callable[[torch.Tensor], Any] | None) -> Metric:
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return CustomMetric(metric)
    if isinstance(metric, str):
        raise WorkbenchError(
            f"metric= takes a metric, not a token: for the probability of {metric!r} use "
            f"metric=wb.prob({metric!r}); against a foil, wb.logit_diff({metric!r}, foil)."
        )
    got = "metric is required" if metric is None else f"metric= must be a metric, got {type(metric).__name__}"
    raise WorkbenchError(
        f"{got}: wb.logit_diff(' Paris', ' Rome'), wb.prob(' Paris'), wb.logprob(tok), "
        "or any callable(logits [B, V]) -> [B]."
    )
