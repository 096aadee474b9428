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


@dataclass(frozen=True, repr=False)
class LogitDiff(Metric):
    target: str | int
    foil: str | int
    needs_clean = False

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"logit_diff({self.target!r}, {self.foil!r})"

    def bind(self, model: Any) -> BoundMetric:
        t, f = model.token_id(self.target), model.token_id(self.foil)
        return lambda logits, clean=None: logits[:, t] - logits[:, f]

    def code(self, model: Any) -> str:
        t, f = model.token_id(self.target), model.token_id(self.foil)
        return (
            f"def metric(logits, clean_logits=None):  # logit difference {self.target!r} - {self.foil!r}\n"
            f"    return logits[:, {t}] - logits[:, {f}]\n"
        )


@dataclass(frozen=True, repr=False)
class Prob(Metric):
    token: str | int
    log: bool = False

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{'logprob' if self.log else 'prob'}({self.token!r})"

    def bind(self, model: Any) -> BoundMetric:
        t = model.token_id(self.token)
        if self.log:
            return lambda logits, clean=None: torch.log_softmax(logits, dim=-1)[:, t]
        return lambda logits, clean=None: torch.softmax(logits, dim=-1)[:, t]

    def code(self, model: Any) -> str:
        t = model.token_id(self.token)
        fn = "log_softmax" if self.log else "softmax"
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


def _token(token: Any, what: str) -> str | int:
    """A metric token as text (checked to be encodable) or a plain int id (numpy / 0-d tensor ids accepted)."""
    if isinstance(token, str):
        return check_text(token, what)
    return as_int(
        token,
        f"The {what} id",
        error=TokenizationError,
        hint=" Give a token as text (e.g. ' Paris') or as an integer id.",
    )


def logit_diff(target: str | int, foil: str | int) -> Metric:
    """Logit of `target` minus logit of `foil` at the last position (each exactly one token)."""
    return LogitDiff(_token(target, "target token"), _token(foil, "foil token"))


def prob(token: str | int) -> Metric:
    """Probability of `token` at the last position."""
    return Prob(_token(token, "metric token"))


def logprob(token: str | int) -> Metric:
    """Log-probability of `token` at the last position."""
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
