"""The emulator's memory: keys, predictions over time, sliding-window counters and stats."""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from tryon.emulator.conf import EmulatorConfig, OutputFault
from tryon.models import IMAGE_FIELDS, model_spec


def input_hash(model_name: str, inputs: dict[str, Any]) -> str:
    canonical = json.dumps({"model_name": model_name, "inputs": inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Prediction:
    id: str
    key: str
    model_name: str
    inputs: dict[str, Any]
    hash: str
    created: float
    latency: float
    num_samples: int  # outputs
    output_format: str
    return_base64: bool
    webhook_url: str | None = None
    failure: tuple[str, str] | None = None  # (name, message)
    fail_at: float | None = None  # failures end earlier than a completion
    expired: bool = False
    output_fault: OutputFault | None = None  # injected: its outputs are blank or wrongly sized
    thumbs: tuple[bytes, bytes] | None = None  # model, garment thumbnails (PNG)
    settled: bool = False
    credits: int = 0  # charged on completion
    size: tuple[int, int] = (864, 1296)  # (width, height) px of each output
    served_sha256: dict[int, str] = field(default_factory=dict)
    served_all: dict[int, list[str]] = field(default_factory=dict)  # every distinct sha256 served per index
    status_calls: int = 0
    noticed: float | None = None  # when a status call first answered with the terminal status
    # How POST /v1/run answered after creating it: "ok", or an injected "500_after_create" or
    # "dropped_after_create" (the client cannot know the id: a resubmission is explained).
    answer: str = "ok"
    seq: int = 0  # creation order since the last reset (out-of-order webhooks wait for a later one)
    # The webhook: None without a webhook_url, else "pending", "lost" (injected: never sent),
    # "delivered" (a 2xx came back) or "refused" (every try answered non-2xx or failed).
    webhook: str | None = None
    webhook_attempts: int = 0  # POSTs sent, an injected duplicate included
    webhook_answers: list[int] = field(default_factory=list)  # status codes seen; 0 for a transport error
    webhook_faults: list[str] = field(default_factory=list)  # injected: "delayed", "duplicated", "out_of_order"
    webhook_delay: float = 0.0  # injected delay before the first try (real seconds)
    webhook_copy_after: float = 0.0  # a duplicate's gap after the first try (real seconds)

    @property
    def ends(self) -> float:
        return self.fail_at if self.failure and self.fail_at is not None else self.created + self.latency

    def status(self, now: float) -> str:
        elapsed = now - self.created
        if now >= self.ends:
            return "failed" if self.failure else "completed"
        if elapsed < 0.1 * self.latency:
            return "starting"
        if elapsed < 0.25 * self.latency:
            return "in_queue"
        return "processing"


class Window:
    """An exact sliding log of accepted requests; remembers the most ever seen in one window."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.most = 0

    def count(self, now: float, seconds: float) -> int:
        while self.times and self.times[0] <= now - seconds:
            self.times.popleft()
        return len(self.times)

    def add(self, now: float, seconds: float) -> None:
        self.times.append(now)
        self.most = max(self.most, self.count(now, seconds))


@dataclass
class Account:
    subscription: int
    on_demand: int = 0
    reserved: int = 0
    windows: dict[str, Window] = field(default_factory=lambda: defaultdict(Window))
    active: set[str] = field(default_factory=set)

    @property
    def total(self) -> int:
        return self.subscription + self.on_demand

    def charge(self, credits: int) -> None:
        from_subscription = min(self.subscription, credits)
        self.subscription -= from_subscription
        self.on_demand -= credits - from_subscription


class State:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.accounts = {key: Account(credits) for key, credits in self.config.keys.items()}
        self.predictions: dict[str, Prediction] = {}
        self.requests: dict[str, Counter[str]] = defaultdict(Counter)
        self.rejections: list[dict[str, Any]] = []  # the first 429s: when, and the window they met
        self.created_per_hash: Counter[str] = Counter()
        self.credits_charged = 0
        self.most_in_flight: Counter[str] = Counter()
        self.final: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()  # faults injected, by kind
        self.latencies: list[float] = []
        self.webhooks: Counter[str] = Counter(dict.fromkeys(("sent", "delivered", "refused", "lost"), 0))
        self.webhook_sent_seq = -1  # the latest-created prediction whose webhook has been sent

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def account(self, key: str) -> Account | None:
        if key not in self.accounts and key in self.config.keys:
            self.accounts[key] = Account(self.config.keys[key])
        return self.accounts.get(key)

    def settle(self, account: Account, now: float) -> None:
        """Charge or release what ended since the last look (lazy: the clock decides statuses)."""
        for pid in list(account.active):
            prediction = self.predictions[pid]
            if now < prediction.ends:
                continue
            account.active.discard(pid)
            account.reserved -= prediction.credits
            prediction.settled = True
            status = prediction.status(now)
            self.final[status] += 1
            if status == "completed":
                account.charge(prediction.credits)
                self.credits_charged += prediction.credits
                self.latencies.append(prediction.latency * self.config.time_scale)

    def in_flight(self, account: Account, now: float) -> int:
        self.settle(account, now)
        return len(account.active)

    def credits(self, model_name: str, inputs: dict[str, Any]) -> int:
        """What a completed prediction is charged: outputs × the registry's price per output, or
        the configured assumption where the registry knows only an upper bound."""
        spec = model_spec(model_name)
        applied = spec.applied(inputs)
        per_output = spec.credits_per_output(applied)
        if not spec.credits_exact:
            key = "/".join(str(applied.get(o)) for o in spec.price_options)
            per_output = self.config.assumed_credits.get(model_name, {}).get(key, per_output)
        return spec.outputs(applied) * per_output

    def create(self, key: str, model_name: str, inputs: dict[str, Any], webhook_url: str | None) -> Prediction:
        config, now = self.config, self.now()
        spec = model_spec(model_name)
        if spec.mode_field == "mode":  # the v1.x family: the configured table by mode
            mode = inputs.get("mode", "balanced")
            mean = config.latencies.get(mode, config.latencies["balanced"])
        else:
            mean = spec.latency(inputs)
        if spec.legacy:
            mean *= config.legacy_speedup
        mean *= config.latency_factor(len(self.predictions))
        latency = config.scaled(mean * self.rng.uniform(1 - config.latency_jitter, 1 + config.latency_jitter))
        prediction = Prediction(
            # Unique across restarts, like the provider's: a resumed id must never name another item.
            id=f"{uuid.uuid4()}-emu", key=key, model_name=model_name, inputs=inputs,
            hash=input_hash(model_name, inputs), created=now, latency=latency,
            num_samples=spec.outputs(inputs), output_format=inputs.get("output_format", "png"),
            credits=self.credits(model_name, inputs), size=spec.size(inputs),
            return_base64=bool(inputs.get("return_base64", False)), webhook_url=webhook_url,
            expired=self.rng.random() < config.faults.expired_output_rate, seq=len(self.predictions),
        )
        if prediction.expired:
            self.injected["expired_output"] += 1
        self._inject_failure(prediction)
        self._inject_output_fault(prediction)
        if webhook_url:
            self._plan_webhook(prediction)
        account = self.accounts[key]
        account.active.add(prediction.id)
        account.reserved += prediction.credits
        self.most_in_flight[key] = max(self.most_in_flight[key], len(account.active))
        self.predictions[prediction.id] = prediction
        self.created_per_hash[prediction.hash] += 1
        return prediction

    def _inject_failure(self, prediction: Prediction) -> None:
        faults = self.config.faults
        images = " ".join(str(prediction.inputs.get(f, "")) for f in IMAGE_FIELDS)
        for needle, name in faults.fail_inputs.items():
            if needle in images:
                self.fail(prediction, name, f"injected {name} for inputs matching {needle!r}")
                return
        roll = self.rng.random()
        for name, rate in faults.failure_rates.items():
            if roll < rate:
                self.fail(prediction, name, f"injected {name}")
                return
            roll -= rate

    def _inject_output_fault(self, prediction: Prediction) -> None:
        """An input match, else a draw per rate; a rate of 0 draws nothing, so runs without these
        faults keep their random sequence."""
        faults = self.config.faults
        images = " ".join(str(prediction.inputs.get(f, "")) for f in IMAGE_FIELDS)
        fault = next((kind for needle, kind in faults.output_faults.items() if needle in images), None)
        for kind, rate in (("blank", faults.blank_output_rate), ("wrong_size", faults.wrong_size_rate)):
            if fault is None and rate and self.rng.random() < rate:
                fault = kind
        if fault is not None:
            prediction.output_fault = fault
            self.injected[f"output_{fault}"] += 1

    def _plan_webhook(self, prediction: Prediction) -> None:
        """Draw the webhook's faults now, in creation order, so a seeded run repeats them.
        A rate of 0 draws nothing: runs without webhook faults keep their random sequence."""
        faults, rng, config = self.config.faults, self.rng, self.config

        def roll(rate: float) -> bool:
            return bool(rate) and rng.random() < rate

        if roll(faults.webhook_lost_rate):
            prediction.webhook = "lost"
            self.injected["webhook_lost"] += 1
            self.webhooks["lost"] += 1
            return
        prediction.webhook = "pending"
        if roll(faults.webhook_delay_rate):
            prediction.webhook_delay = config.scaled(rng.uniform(0.0, faults.webhook_delay_seconds))
            prediction.webhook_faults.append("delayed")
        if roll(faults.webhook_duplicate_rate):
            prediction.webhook_copy_after = config.scaled(rng.uniform(0.0, 1.0))
            prediction.webhook_faults.append("duplicated")
        if roll(faults.webhook_out_of_order_rate):
            prediction.webhook_faults.append("out_of_order")
        for kind in prediction.webhook_faults:
            self.injected[f"webhook_{kind}"] += 1

    def fail(self, prediction: Prediction, name: str, message: str) -> None:
        self.injected[f"failure:{name}"] += 1
        prediction.failure = (name, message)
        prediction.fail_at = prediction.created + prediction.latency * 0.5

    def record(self, prediction: Prediction, now: float) -> dict[str, Any]:
        """One prediction as the admin endpoints show it (no image bodies)."""
        images = {f: str(prediction.inputs.get(f, ""))[:200] for f in IMAGE_FIELDS}
        return {
            "id": prediction.id, "hash": prediction.hash, "model_name": prediction.model_name,
            "status": prediction.status(now), "latency": prediction.latency, "created": prediction.created,
            "ends": prediction.ends, "failure": prediction.failure, "num_samples": prediction.num_samples,
            "credits": prediction.credits, "size": list(prediction.size),
            "status_calls": prediction.status_calls, "noticed": prediction.noticed, "answer": prediction.answer, "expired": prediction.expired,
            "output_fault": prediction.output_fault, "seed": prediction.inputs.get("seed"),
            "images": images,
            "webhook": prediction.webhook, "webhook_attempts": prediction.webhook_attempts,
            "webhook_answers": list(prediction.webhook_answers), "webhook_faults": list(prediction.webhook_faults),
            "webhook_delay": prediction.webhook_delay,
            "output_sha256": [prediction.served_sha256.get(i) for i in range(prediction.num_samples)],
            "served_sha256": [list(prediction.served_all.get(i, [])) for i in range(prediction.num_samples)],
        }

    def stats(self) -> dict[str, Any]:
        statuses = [p.status_calls for p in self.predictions.values()]
        terminal = sum(self.final.values())
        too_many = Counter()
        for codes in self.requests.values():
            for code, n in codes.items():
                if code.startswith("429:"):
                    too_many[code[4:]] += n
        return {
            "requests": {endpoint: dict(codes) for endpoint, codes in self.requests.items()},
            "most_in_window": {endpoint: max((a.windows[endpoint].most for a in self.accounts.values()), default=0)
                               for endpoint in ("run", "status", "credits")},
            "limits": {e: list(self.config.limit(e)) for e in ("run", "status", "credits")},
            "most_in_flight": max(self.most_in_flight.values(), default=0),
            "max_in_flight": self.config.max_in_flight,
            "predictions": len(self.predictions),
            "created_per_hash": dict(self.created_per_hash),
            "duplicate_hashes": sum(1 for n in self.created_per_hash.values() if n > 1),
            "credits_charged": self.credits_charged,
            "status_calls": sum(statuses),
            "status_calls_per_prediction": (sum(statuses) / terminal) if terminal else None,
            "too_many_requests": dict(too_many),
            "rejections": list(self.rejections),
            "injected": dict(self.injected),
            "webhooks": dict(self.webhooks),
            "final_statuses": dict(self.final),
            "mean_latency": (sum(self.latencies) / len(self.latencies)) if self.latencies else None,
            "time_scale": self.config.time_scale,
        }
