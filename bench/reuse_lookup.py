"""What reuse across collections costs on S3, in round trips: planning with the index against
planning without it, copying a reused item, and indexing an older archive.

    uv run --locked python bench/reuse_lookup.py --items 64

On moto's S3 server on loopback (no emulator: nothing is paid for), collection ``a`` of
``--items`` items is archived through :class:`tryon.archive.Archive` (synthetic outputs of
``--output-kb`` KB, ``result.json``, index entry), then collection ``b`` of twice as many items,
half of them ``a``'s pairs, is planned without the index (``reuse=False``, the baseline) and
with it, in the same run. Every HTTP request s3fs sends is counted (botocore's ``before-send``
event: one per round trip, retries included) by kind. Then ``b``'s reused items are taken
through the ``reuse`` stage (copy, verify, ``result.json``), and ``a``'s index is removed and
rebuilt by :func:`tryon.index.index_archive`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUCKET = "reuse-bench"


class Requests:
    """Counts the requests an s3fs filesystem sends, by kind (GET, GET output, HEAD, PUT, COPY,
    LIST, DELETE)."""

    def __init__(self, fs) -> None:
        fs.connect()
        fs.s3.meta.events.register("before-send.s3", self._count)
        self.counts: Counter[str] = Counter()

    def _count(self, request, **_) -> None:
        if request.method == "PUT" and "x-amz-copy-source" in {k.lower() for k in request.headers}:
            kind = "COPY"
        elif request.method == "GET" and ("list-type=" in request.url or request.url.rstrip("/").endswith(BUCKET)):
            kind = "LIST"
        elif request.method == "GET" and "/output_" in request.url:
            kind = "GET output"
        else:
            kind = request.method
        self.counts[kind] += 1

    def take(self) -> Counter[str]:
        counts, self.counts = self.counts, Counter()
        return counts


def write_spec(folder: Path, name: str, garments: int, models: int, first_model: int = 0) -> Path:
    import yaml
    from PIL import Image

    (folder / "img").mkdir(parents=True, exist_ok=True)
    spec = {"name": name, "model_name": "tryon-v1.6", "inputs": {"mode": "performance"}, "pairs": "all",
            "garments": [], "models": []}
    for i in range(garments):
        Image.new("RGB", (32, 32), (i % 256, i // 256, 7)).save(folder / "img" / f"g{i}.png")
        spec["garments"].append({"id": f"g{i}", "image": f"img/g{i}.png"})
    for i in range(first_model, first_model + models):
        Image.new("RGB", (32, 48), (9, i % 256, 200)).save(folder / "img" / f"m{i}.png")
        spec["models"].append({"id": f"m{i}", "image": f"img/m{i}.png"})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


async def archive_collection(archive, spec: Path, output_bytes: int) -> None:
    """Archive every item of ``spec`` as a paid run would: output, result.json, index entry."""
    from tryon import batch
    from tryon.archive import Flags, ItemResult, SubmissionRecord, utcnow
    from tryon.models import Prediction

    collection = await batch.load_and_validate(str(spec))
    planned = await batch.plan(collection, archive, reuse=False)

    async def one(state) -> None:
        data = os.urandom(output_bytes)
        output = await archive.write_output(state.item, 0, data, "png")
        prediction = Prediction(id=f"bench-{state.key[:12]}", status="completed", credits_used=1)
        submission = SubmissionRecord(prediction_id=prediction.id, submitted_at=utcnow(), attempt=1)
        result = ItemResult.archived(state.item, state.key, submission, prediction, [output], Flags())
        await archive.write_index(await archive.write_result(state.item, result))

    for start in range(0, len(planned.states), 32):
        await asyncio.gather(*(one(s) for s in planned.states[start:start + 32]))


def per_item(counts: Counter[str], items: int) -> str:
    total = sum(counts.values())
    kinds = ", ".join(f"{k} {v / items:.2f}" for k, v in sorted(counts.items()))
    return f"{total / items:.2f} ({kinds})"


async def main(items: int, output_kb: int) -> None:
    from moto.server import ThreadedMotoServer

    from tryon import batch, item
    from tryon.archive import Archive
    from tryon.index import index_archive
    from tryon.process import Process
    from tryon.runtime import Runtime

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"key": "bench", "secret": "bench", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        archive = Archive(f"s3://{BUCKET}/archive", options)
        requests = Requests(archive.fs)
        garments = max(1, items // 4)
        with TemporaryDirectory() as tmp:
            a = write_spec(Path(tmp) / "a", "a", garments, 4)
            b = write_spec(Path(tmp) / "b", "b", garments, 8)  # m0..m3 are a's: half of b's pairs
            await archive_collection(archive, a, output_kb * 1024)
            requests.take()
            spec_b = await batch.load_and_validate(str(b))
            n = spec_b.item_count()

            baseline = await batch.plan(spec_b, archive, reuse=False)
            without = requests.take()
            planned = await batch.plan(spec_b, archive, reuse=True)
            with_index = requests.take()
            assert baseline.as_dict()["submit"] == n and planned.as_dict()["reuse"] == n // 2

            reused = [s for s in planned.states if s.stage == "reuse"]
            runtime = Runtime(None, None, archive, process=Process(), workers=1)  # type: ignore[arg-type]  # reuse needs no API
            for start in range(0, len(reused), 32):
                await asyncio.gather(*(item.run(runtime, s) for s in reused[start:start + 32]))
            assert all(s.stage == "reused" for s in reused)
            copying = requests.take()

            again = await batch.plan(spec_b, archive, reuse=True)
            rerun = requests.take()
            assert again.as_dict()["skip"] == n // 2

            archive.fs.rm(f"{BUCKET}/archive/_index", recursive=True)
            requests.take()
            done = await index_archive(archive)
            archived = n // 2 + len(reused)  # a's items and b's reused ones
            indexing = requests.take()
    finally:
        server.stop()

    print(f"b: {n} items planned, {n // 2} of them archived by a ({output_kb} KB outputs); moto S3 on loopback")
    print("| step | requests per item (by kind) |")
    print("|---|---|")
    print(f"| plan b without the index (baseline) | {per_item(without, n)} |")
    print(f"| plan b with the index | {per_item(with_index, n)} |")
    print(f"| lookup cost over the baseline | {(sum(with_index.values()) - sum(without.values())) / n:+.2f} |")
    print(f"| reuse one item (copy, verify, result.json) | {per_item(copying, len(reused))} |")
    print(f"| plan b again (reused items skipped) | {per_item(rerun, n)} |")
    print(f"| index the archive from scratch ({archived} archived items, {done.written} keys) "
          f"| {per_item(indexing, archived)} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=64, help="items of collection a (b has twice as many)")
    parser.add_argument("--output-kb", type=int, default=200, help="size of each synthetic output")
    args = parser.parse_args()
    asyncio.run(main(args.items, args.output_kb))
