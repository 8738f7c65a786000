"""What a run did: one entry per item (archived, reused, failed, skipped, left for the budget or
cancelled), totals, credits, and a short human summary (``report.json`` and ``summary.txt``,
written by :func:`tryon.batch.save_report`)."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, computed_field

from tryon.archive import Flags, ItemResult, utcnow
from tryon.spec.items import Item

State = Literal["archived", "reused", "failed", "skipped", "unfunded", "cancelled"]
STATES: tuple[State, ...] = ("archived", "reused", "failed", "skipped", "unfunded", "cancelled")
SOMETIMES: frozenset[State] = frozenset({"reused", "unfunded", "cancelled"})  # in the summary only when some are
MAX_LISTED = 20


class ItemReport(ItemResult):
    """One item of one run: how it ended (its :class:`~tryon.archive.ItemResult`, archived or not),
    ``reused`` when its outputs were copied from another item with the same key (0 credits),
    ``skipped`` when an earlier run archived it, ``unfunded`` when its submission would not fit the
    run's spend limit, ``cancelled`` when the run drained before submitting it (for both, nothing
    archived: a later run plans it again), and what this run spent on it in ``credits_used``."""

    state: State  # type: ignore[assignment]
    note: str = ""
    credits_needed: int | None = Field(None, description="Unfunded: the most its submission would cost, in credits.")

    @classmethod
    def of(cls, result: ItemResult, *, note: str = "", earlier: bool = False) -> "ItemReport":
        """The entry for ``result``; ``earlier``: it ended in an earlier run (archived: skipped),
        so this run spent nothing on it and its flags were reported then."""
        if earlier:
            return cls(**{**dict(result), "state": "skipped" if result.state == "archived" else "failed",
                          "credits_used": 0, "flags": Flags(needs_review=result.flags.needs_review), "note": note})
        return cls(**{**dict(result), "state": "reused" if result.reused_from else result.state, "note": note})

    @classmethod
    def unfunded(cls, item: Item, key: str, flags: Flags, *, attempts: int) -> "ItemReport":
        """The entry of an item left for the budget after ``attempts`` submissions (phantoms
        included); not written to the archive."""
        return cls._of(item, key, None, state="unfunded", credits_needed=item.credits, flags=flags, attempts=attempts)

    @classmethod
    def cancelled(cls, item: Item, key: str, flags: Flags, *, attempts: int, why: str) -> "ItemReport":
        """The entry of an item a drained run did not submit (again); not written to the archive."""
        return cls._of(item, key, None, state="cancelled", flags=flags, attempts=attempts,
                       note=f"not submitted: {why}")


def new_run_id(now: dt.datetime | None = None) -> str:
    """Sortable and unique: ``20261123T223300Z-3f9a1c``."""
    return f"{(now or utcnow()).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


class RunReport(BaseModel):
    """Every item of one run of one collection for one model name."""

    collection: str
    model_name: str
    run_id: str = Field(default_factory=new_run_id)
    started_at: dt.datetime = Field(default_factory=utcnow)
    finished_at: dt.datetime | None = None
    credits_estimated: int | None = Field(None, description="The plan's estimate for the items it submitted.")
    credits_estimate_exact: bool = Field(True, description="False: the estimate is the top of a published range.")
    max_credits: int | None = Field(None, description="The run's spend limit, when it had one.")
    items: list[ItemReport] = Field(default_factory=list)
    garments: dict[str, str | None] = Field(
        default_factory=dict, description="Garment ids in spec order, each with its thumbnail (a path relative to "
                                          "the report, or the input's URL), or None.")
    models: dict[str, str | None] = Field(default_factory=dict, description="Model photo ids in spec order, the same way.")

    _index: dict[str, int] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        self._index = {entry.label: i for i, entry in enumerate(self.items)}

    @classmethod
    def start(cls, collection: str, model_name: str, run_id: str | None = None) -> "RunReport":
        started = utcnow()
        return cls(collection=collection, model_name=model_name, run_id=run_id or new_run_id(started),
                   started_at=started)

    def add(self, entry: ItemReport) -> None:
        """Add an item's entry; a second entry for the same item replaces the first."""
        index = self._index.setdefault(entry.label, len(self.items))
        if index == len(self.items):
            self.items.append(entry)
        else:
            self.items[index] = entry

    # Derived from the items (and written into report.json for its readers).

    @computed_field  # type: ignore[prop-decorator]
    @property
    def totals(self) -> dict[str, int]:
        """Items by state; ``unfunded`` only when the run had a spend limit (none are, without one),
        ``cancelled`` only when the run drained."""
        counts = {s: sum(1 for e in self.items if e.state == s) for s in STATES}
        return {s: n for s, n in counts.items() if (s != "unfunded" or self.max_credits is not None)
                and (s != "cancelled" or n)}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def credits_used(self) -> int:
        return sum(e.credits_used for e in self.items)

    @computed_field(description="Labels of items that may have been billed twice.")  # type: ignore[prop-decorator]
    @property
    def possible_duplicate_charges(self) -> list[str]:
        return [e.label for e in self.items if e.flags.possible_duplicate_charge]

    @computed_field(description="Labels of items submitted again after a 404.")  # type: ignore[prop-decorator]
    @property
    def resubmitted_after_404(self) -> list[str]:
        return [e.label for e in self.items if e.flags.resubmitted_after_404]

    @computed_field(description="Labels of items whose ambiguous submission was recovered by its webhook "
                                "(not paid twice).")  # type: ignore[prop-decorator]
    @property
    def recovered_ambiguous(self) -> list[str]:
        return [e.label for e in self.items if e.flags.recovered_ambiguous]

    @computed_field(description="Labels of items whose outputs the automatic checks flagged, "
                                "with the reason.")  # type: ignore[prop-decorator]
    @property
    def needs_review(self) -> dict[str, str]:
        return {e.label: e.flags.needs_review for e in self.items if e.flags.needs_review}

    def finish(self) -> None:
        self.finished_at = utcnow()

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def seconds(self) -> float | None:
        return round((self.finished_at - self.started_at).total_seconds(), 1) if self.finished_at else None

    def failures(self) -> list[ItemReport]:
        return [e for e in self.items if e.state == "failed"]

    def unfunded(self) -> list[ItemReport]:
        return [e for e in self.items if e.state == "unfunded"]

    def summary_line(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.totals.items() if n or s not in SOMETIMES)
        return (f"{self.collection}/{self.model_name}: {self.total} item{'s' if self.total != 1 else ''} "
                f"({counts}); {self.credits_used} credit{'s' if self.credits_used != 1 else ''} used"
                + ("" if self.credits_estimated is None else
                   f" (estimated {'' if self.credits_estimate_exact else 'at most '}{self.credits_estimated})")
                + ("" if self.max_credits is None else f"; limit {self.max_credits}"))

    def summary_text(self) -> str:
        """A short human summary: totals, then what needs attention."""
        lines = [self.summary_line(), f"run {self.run_id}, started {self.started_at:%Y-%m-%d %H:%M:%S}Z"
                 + (f", took {self.seconds:g} s" if self.seconds is not None else ", not finished")]
        failures = self.failures()
        if failures:
            lines.append(f"failed ({len(failures)}):")
            for entry in failures[:MAX_LISTED]:
                lines.append(f"  {entry.label}: {entry.error_name}: {entry.error_message}")
            if len(failures) > MAX_LISTED:
                lines.append(f"  ... and {len(failures) - MAX_LISTED} more (see report.json)")
        if self.needs_review:
            lines.append(f"needs review ({len(self.needs_review)}; flagged by the automatic checks):")
            lines += [f"  {label}: {reason}" for label, reason in list(self.needs_review.items())[:MAX_LISTED]]
        if unfunded := self.unfunded():
            cost = sum(e.credits_needed or 0 for e in unfunded)
            lines.append(f"left for the budget ({len(unfunded)}, at most {cost} credits; a run with a larger limit "
                         "takes them):")
            for entry in unfunded[:MAX_LISTED]:
                lines.append(f"  {entry.label}: {entry.credits_needed} credit(s)")
            if len(unfunded) > MAX_LISTED:
                lines.append(f"  ... and {len(unfunded) - MAX_LISTED} more (see report.json)")
        if self.possible_duplicate_charges:
            lines.append(f"possibly charged twice ({len(self.possible_duplicate_charges)}; the API answered "
                         "ambiguously to a submission): " + ", ".join(self.possible_duplicate_charges[:MAX_LISTED]))
        if self.recovered_ambiguous:
            lines.append(f"recovered by webhook after an ambiguous answer, not paid twice "
                         f"({len(self.recovered_ambiguous)}): " + ", ".join(self.recovered_ambiguous[:MAX_LISTED]))
        refused = [e for e in self.items if e.flags.reuse_refused]
        if refused:
            lines.append(f"paid for although indexed elsewhere ({len(refused)}; the index entry did not verify):")
            for entry in refused[:MAX_LISTED]:
                lines.append(f"  {entry.label}: {entry.flags.reuse_refused}")
        if self.resubmitted_after_404:
            lines.append(f"submitted again after the provider forgot the prediction (404) "
                         f"({len(self.resubmitted_after_404)}): " + ", ".join(self.resubmitted_after_404[:MAX_LISTED]))
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> "RunReport":
        return cls.model_validate_json(text)

    def totals_dict(self, location: str | None = None) -> dict[str, Any]:
        """Totals as plain data (a flow's return value)."""
        return {
            "collection": self.collection, "model_name": self.model_name, "run_id": self.run_id,
            "items": self.total, **self.totals,
            "credits_used": self.credits_used, "credits_estimated": self.credits_estimated,
            "max_credits": self.max_credits,
            "possible_duplicate_charges": len(self.possible_duplicate_charges),
            "resubmitted_after_404": len(self.resubmitted_after_404),
            "recovered_ambiguous": len(self.recovered_ambiguous), "needs_review": len(self.needs_review),
            "report": location,
        }
