"""DatasetView: the examples of a wb.Dataset with their tokens and the model's prediction; and the helpers the
views over a dataset share (the examples as the view shows them, the filter rule, the predictions)."""

from __future__ import annotations

from typing import Any

import numpy as np
import traitlets

from .base import WorkbenchWidget, _errors, pack

ALIGNS = ("exact", "right", "roles")


def is_dataset(x: Any) -> bool:
    from ..data.dataset import Dataset

    return isinstance(x, Dataset)


def answer_text(model: Any, token: Any) -> str:
    """A target/foil as text: a token id is shown as its token."""
    if token is None:
        return ""
    if isinstance(token, int) and not isinstance(token, bool):
        return str(model.str_tokens([token])[0])
    return str(token)


def example_rows(model: Any, ds: Any, tokens: bool = False) -> list[dict[str, Any]]:
    """Each example as the views show it (text only: the view puts it in the DOM with textContent)."""
    rows = []
    for e in ds:
        row: dict[str, Any] = {
            "clean": e.clean,
            "corrupt": e.corrupt or "",
            "target": answer_text(model, e.target),
            "foil": answer_text(model, e.foil),
        }
        if tokens:
            row["tokens"] = model.to_str_tokens(e.clean)
            if e.corrupt is not None:
                row["corrupt_tokens"] = model.to_str_tokens(e.corrupt)
        rows.append(row)
    return rows


def matching(ds: Any, text: str, correct: list[bool] | None) -> list[int]:
    """The examples the filter keeps: `text` a substring (case-insensitive) of the clean or corrupt prompt, and,
    when `correct` is given, only those the model gets right."""
    needle = text.strip().lower()
    out = []
    for i, e in enumerate(ds):
        if needle and needle not in e.clean.lower() and needle not in (e.corrupt or "").lower():
            continue
        if correct is not None and not correct[i]:
            continue
        out.append(i)
    return out


def prediction_state(preds: list[Any]) -> dict[str, Any]:
    """The predictions of `workbench.data.predict.predictions` as binary arrays (never JSON float lists)."""
    return {
        "top_token": [str(p.top_token) for p in preds],
        "top_prob": pack(np.array([p.top_prob for p in preds], np.float32)),
        "target_prob": pack(np.array([p.target_prob for p in preds], np.float32)),
        "correct": pack(np.array([bool(p.correct) for p in preds], np.int32)),
    }


def offered_aligns(model: Any, ds: Any, corrupt: bool) -> dict[str, str]:
    """{align: "" if it works for this dataset, else why not} for exact, right and roles."""
    from ..data.align import alignment

    out = {}
    for a in ALIGNS:
        try:
            alignment(model, ds, a, corrupt=corrupt)
            out[a] = ""
        except Exception as exc:  # noqa: BLE001 - shown as the reason the option is off
            out[a] = str(exc)
    return out


class DatasetView(WorkbenchWidget):
    """`DatasetView(ds, model)`: one row per example: its clean tokens (and corrupt ones), target and foil, the
    model's top-1 next token on the clean prompt, its probability and whether it is the target.

    The filter box keeps the examples whose clean or corrupt prompt contains the text (case-insensitive);
    "correct only" keeps those the model gets right (as `ds.filter_correct(model)` does). `view.shown` holds the
    indices kept, `view.subset()` the filtered Dataset.
    """

    _view_kind = traitlets.Unicode("dataset").tag(sync=True)
    # {"n", "name", "examples": [{"clean", "corrupt", "target", "foil", "tokens", "corrupt_tokens"}]}
    dataset = traitlets.Dict().tag(sync=True)
    # {"top_token": [...], "top_prob": float32 [N], "target_prob": float32 [N], "correct": int32 [N]}; {} until
    # computed, {"note": why not} when they cannot be (a remote model)
    predictions = traitlets.Dict().tag(sync=True)
    filter_text = traitlets.Unicode("").tag(sync=True)
    correct_only = traitlets.Bool(False).tag(sync=True)
    shown = traitlets.List(traitlets.Int()).tag(sync=True)

    def __init__(self, ds: Any, model: Any, **kwargs: Any):
        if not is_dataset(ds):
            if is_dataset(model):  # DatasetView(model, ds) works too
                ds, model = model, ds
            else:
                raise _errors().WorkbenchError(
                    f"DatasetView(ds, model) takes a wb.Dataset first, got {type(ds).__name__}."
                )
        super().__init__(
            model,
            dataset={"n": len(ds), "name": ds.name, "examples": example_rows(model, ds, tokens=True)},
            shown=list(range(len(ds))),
            **kwargs,
        )
        self.ds = ds
        self._correct: list[bool] | None = None
        self.observe(lambda _c: self._refilter(), names=["filter_text", "correct_only"])
        self._predict()

    def _predict(self) -> None:
        if getattr(self.model, "remote", False):
            self.predictions = {"note": "predictions are not computed for remote models"}
            return
        ds = self.ds

        def run(progress, cancel):
            from ..data.predict import predictions

            progress(0.0, f"predicting {len(ds)} examples")
            return predictions(self.model, ds)

        def done(preds):
            self.last_result = preds
            self._correct = [bool(p.correct) for p in preds]
            self.predictions = prediction_state(preds)
            self._refilter()

        self.submit("predictions", "", run, done, slot="predictions")

    def _refilter(self) -> None:
        correct = None
        if self.correct_only:
            if self._correct is None:
                if self.predictions.get("note"):
                    self._set_error(
                        f"WorkbenchError: correct only needs the predictions: {self.predictions['note']}."
                    )
                return  # the predictions job refilters when it ends
            correct = self._correct
        self.shown = matching(self.ds, self.filter_text, correct)
        if self.status == "error":
            self._clear_error()

    def subset(self) -> Any:
        """The examples shown, as a Dataset."""
        return self.ds[list(self.shown)]

    def to_code(self) -> str:
        return (
            "from workbench.data.predict import predictions\n"
            "preds = predictions(model, ds)  # each example's top-1 token, its probability, correct or not\n"
        )
