"""What the archive's files hold: an item's flags, its pending record, its result and outputs, and
the reuse index's entries. Plain pydantic models; nothing here reads or writes."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, Self

from pydantic import (BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, computed_field, model_serializer,
                      model_validator)

from tryon.spec.items import Item
from tryon.errors import PredictionFailed
from tryon.images import sanitize_inputs
from tryon.models import Prediction


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Flags(BaseModel):
    """What a report must say about an item beyond how it ended. One value, carried by the item's
    state, its pending record and its result; the run's report lists the items that carry each."""

    model_config = ConfigDict(frozen=True)

    possible_duplicate_charge: bool = Field(False, description="A submission got an ambiguous answer (5xx, dropped "
                                            "connection): a prediction without a recorded id may exist and be billed.")
    resubmitted_after_404: bool = Field(False, description="A prediction was unknown to the provider (404) and the "
                                        "item was submitted again.")
    recovered_ambiguous: bool = Field(False, description="A submission got an ambiguous answer and its webhook named "
                                      "the prediction, which was adopted rather than paid for again.")
    reuse_refused: str | None = Field(None, description="Why an index entry for the item's key was not used.")
    needs_review: str | None = Field(None, description="Why the automatic checks (tryon.checks) flagged an output: "
                                     "it does not decode, has the wrong size or is blank.")

    def __or__(self, other: Flags) -> Flags:
        """Every flag set in either (the first reason a reuse was refused)."""
        return Flags(**{name: getattr(self, name) or getattr(other, name) for name in Flags.model_fields})


class Flagged(BaseModel):
    """A record carrying an item's :class:`Flags`. In its file they stand flat beside the other
    fields, as they always have: files written before there was one value read the same."""

    flags: Flags = Field(default_factory=Flags)

    @model_validator(mode="before")
    @classmethod
    def _gather_flags(cls, data: Any) -> Any:
        if isinstance(data, dict) and "flags" not in data and (names := Flags.model_fields.keys() & data.keys()):
            data = {k: v for k, v in data.items() if k not in names} | {"flags": {k: data[k] for k in names}}
        return data

    @model_serializer(mode="wrap")
    def _flat_flags(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        data.update(data.pop("flags", {}))
        return data


class OutputRecord(BaseModel):
    """One archived output, verified by reading it back."""

    index: int
    name: str = Field(description="File name in the item's folder, e.g. output_0.png.")
    path: str = Field(description="Path relative to the archive root.")
    url: str = Field(description="Full location (fsspec URL or local path).")
    size: int
    sha256: str


class SubmissionRecord(BaseModel):
    """A prediction the provider accepted for an item."""

    prediction_id: str
    submitted_at: dt.datetime
    attempt: int


class PendingRecord(Flagged):
    """``prediction.json``: the predictions submitted for an item whose outputs are not archived yet."""

    key: str
    collection: str
    model_name: str
    label: str
    submissions: list[SubmissionRecord] = Field(default_factory=list, description="Oldest first; the last is current.")
    attempts: int = Field(0, description="Submissions so far; one answered ambiguously counts, without a record.")
    updated_at: dt.datetime = Field(default_factory=utcnow)
    owner: str | None = Field(None, description="The run waiting on it: while that run's lease is fresh "
                              "(tryon.lease), no one else finishes it.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="Without image bodies or URL secrets: what a "
                                   "reconciler needs to name the item.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def prediction_ids(self) -> list[str]:
        return [s.prediction_id for s in self.submissions]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def submitted_at(self) -> dt.datetime | None:
        return self.submissions[-1].submitted_at if self.submissions else None

    @property
    def current(self) -> SubmissionRecord | None:
        return self.submissions[-1] if self.submissions else None


class Timings(BaseModel):
    submitted_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    archived_at: dt.datetime | None = None
    seconds: float | None = Field(None, description="From submission to archived (or to failure).")


class IndexedOutput(BaseModel):
    name: str
    size: int
    sha256: str


class IndexEntry(BaseModel):
    """``_index/<key[:2]>/<key>.json``: where the outputs of an item key are archived.

    Written after that item's ``result.json``, so it never names an item still being written;
    trusted only once a copy of every output verifies against it (a later run may have changed
    or removed the item since)."""

    key: str
    collection: str
    model_name: str
    label: str
    folder: str = Field(description="The item folder, relative to the archive root.")
    prediction_id: str | None = None
    outputs: list[IndexedOutput]
    indexed_at: dt.datetime = Field(default_factory=utcnow)


class ItemResult(Flagged):
    """``result.json``: how an item ended. Written last, after every output is verified."""

    model_config = ConfigDict(extra="ignore")

    key: str
    state: Literal["archived", "failed"]
    collection: str
    model_name: str
    garment_id: str
    model_id: str
    label: str
    prediction_id: str | None = None
    prediction_ids: list[str] = Field(default_factory=list)
    inputs: dict[str, Any] = Field(default_factory=dict, description="Without image bodies or URL secrets.")
    timings: Timings = Field(default_factory=Timings)
    credits_used: int = 0
    outputs: list[OutputRecord] = Field(default_factory=list)
    error_name: str | None = None
    error_message: str | None = None
    attempts: int = 1
    reused_from: str | None = Field(None, description="The item folder (relative to the archive root) whose "
                                    "outputs were copied here and verified, for 0 credits.")
    take: int = Field(1, description="Which take of the item this is (tryon.takes): 1, then one more per rejection.")

    @classmethod
    def _of(cls, item: Item, key: str, prediction_id: str | None, **fields: Any) -> Self:
        return cls(key=key, collection=item.collection, model_name=item.model_name, garment_id=item.garment_id,
                   model_id=item.model_id, label=item.label, take=item.take, prediction_id=prediction_id,
                   prediction_ids=[prediction_id] if prediction_id else [], inputs=sanitize_inputs(item.inputs),
                   **fields)

    @classmethod
    def archived(cls, item: Item, key: str, submission: SubmissionRecord, prediction: Prediction,
                 outputs: list[OutputRecord], flags: Flags) -> ItemResult:
        """The result of ``submission``'s completed ``prediction``, whose ``outputs`` are archived."""
        now = utcnow()
        credits = prediction.credits_used
        return cls._of(
            item, key, prediction.id, state="archived", outputs=list(outputs), flags=flags,
            attempts=max(1, submission.attempt),
            credits_used=credits if credits is not None else len(outputs),  # 1 credit per output image
            timings=Timings(submitted_at=submission.submitted_at, completed_at=now, archived_at=now,
                            seconds=round((now - submission.submitted_at).total_seconds(), 3)))

    @classmethod
    def failed(cls, item: Item, key: str, submission: SubmissionRecord | None, failure: PredictionFailed,
               flags: Flags, *, attempts: int, credits_used: int | None = None) -> ItemResult:
        """The result of an item that ended without outputs, after ``attempts`` submissions."""
        now = utcnow()
        submitted = submission.submitted_at if submission else None
        return cls._of(
            item, key, submission.prediction_id if submission else failure.prediction_id, state="failed",
            error_name=failure.name, error_message=failure.message or str(failure), flags=flags,
            attempts=max(1, attempts), credits_used=credits_used or 0,  # failed predictions are not charged
            timings=Timings(submitted_at=submitted, completed_at=now,
                            seconds=round((now - submitted).total_seconds(), 3) if submitted else None))

    @classmethod
    def reused(cls, item: Item, key: str, entry: IndexEntry, outputs: list[OutputRecord]) -> ItemResult:
        """The result of an item whose outputs were copied from ``entry``'s item, for 0 credits."""
        now = utcnow()
        return cls._of(item, key, entry.prediction_id, state="archived", outputs=list(outputs), credits_used=0,
                       reused_from=entry.folder, timings=Timings(completed_at=now, archived_at=now, seconds=0.0))
