"""Metrics: functions of the last position's logits [B, V] -> [B]."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import WorkbenchError

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


class CustomMetric(Metric):
    """A user callable(logits [B, V]) -> [B] (or a scalar for B == 1)."""

    def __init__(self, fn: Callable[[torch.Tensor], Any]) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", "custom")

    def bind(self, model: Any) -> BoundMetric:
        fn = self.fn

        def call(logits: torch.Tensor, clean: torch.Tensor | None = None) -> torch.Tensor:
            out = fn(logits)
            if not isinstance(out, torch.Tensor):
                out = torch.as_tensor(out, dtype=logits.dtype)
            if out.dim() == 0:
                out = out.expand(logits.shape[0]) if logits.shape[0] == 1 else out
            if out.shape != (logits.shape[0],):
                raise WorkbenchError(
                    f"The metric {self.name} returned shape {tuple(out.shape)} for logits of shape "
                    f"{tuple(logits.shape)}; it must return one number per row, shape ({logits.shape[0]},)."
                )
            return out

        return call

    def code(self, model: Any) -> str:
        return f"metric = ...  # your own metric, {self.name}(logits [B, V]) -> [B]\n"


def logit_diff(target: str | int, foil: str | int) -> Metric:
    """Logit of `target` minus logit of `foil` at the last position (each exactly one token)."""
    return LogitDiff(target, foil)


def prob(token: str | int) -> Metric:
    """Probability of `token` at the last position."""
    return Prob(token)


def logprob(token: str | int) -> Metric:
    """Log-probability of `token` at the last position."""
    return Prob(token, log=True)


def kl_to_clean() -> Metric:
    """KL divergence from the clean run's next-token distribution (needs a clean run: patching)."""
    return KLToClean()


def as_metric(metric: Metric | Callable[[torch.Tensor], Any] | None) -> Metric:
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return CustomMetric(metric)
    raise WorkbenchError(
        "metric is required: wb.logit_diff(' Paris', ' Rome'), wb.prob(' Paris'), wb.logprob(tok), "
        "or any callable(logits [B, V]) -> [B]."
    )
