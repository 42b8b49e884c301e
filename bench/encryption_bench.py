"""Benchmark the cost of artifact encryption at rest (#21).

Three figures, each with and without encryption, medians of --repeat runs:

* store: MB/s of `models_app.storage.artifact_store` (hash + AES-256-GCM + write + fsync)
  for --size-mb of random bytes fed in 1 MiB chunks, as an upload is, against the same loop
  without encryption (what the store did before: hash + write + fsync);
* read: MB/s of `artifact_read` (decrypt + hash check) against a plain file read;
* model-server startup: `load_model` of deployments_app/model_server/server.py (the time it
  reports as ``load_ms`` before binding its port) for a plaintext file against the encrypted
  artifact plus its key file (decrypt in memory, then the same restricted loader), for the
  spam fixture and a larger random forest made here (--forest-trees).

Everything lives in a temporary folder removed at the end; settings use a throwaway master
key. No database, no Docker.

    .venv/bin/python bench/encryption_bench.py [--size-mb 256] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path("/work/shared/fixtures/models")
CHUNK = 1024 * 1024


def _plain_store(chunks, folder: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=folder)
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        for chunk in chunks:
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return Path(name)


def _median_time(func, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--forest-trees", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="portal-enc-bench-"))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        PORTAL_DATA_DIR=str(tmp / "data"),
        PORTAL_ARTIFACT_DIR=str(tmp / "artifacts"),
        PORTAL_ARTIFACT_KEY=secrets.token_hex(32),
    )
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from models_app import storage

    results: dict[str, float] = {}
    try:
        block = os.urandom(CHUNK)
        chunks = [block[:-8] + i.to_bytes(8, "big") for i in range(args.size_mb)]
        size = args.size_mb
        plain_dir = tmp / "plain"
        plain_dir.mkdir()

        def plain_store():
            _plain_store(chunks, plain_dir).unlink()

        def encrypted_store():
            stored = storage.artifact_store(iter(chunks), max_bytes=size * CHUNK + 1)
            stored.path.unlink()

        results["store_plain_mb_s"] = size / _median_time(plain_store, args.repeat)
        results["store_encrypted_mb_s"] = size / _median_time(encrypted_store, args.repeat)

        kept_plain = _plain_store(chunks, plain_dir)
        kept = storage.artifact_store(iter(chunks), max_bytes=size * CHUNK + 1)
        results["read_plain_mb_s"] = size / _median_time(kept_plain.read_bytes, args.repeat)
        results["read_encrypted_mb_s"] = size / _median_time(
            lambda: storage.artifact_read(kept.sha256), args.repeat
        )
        kept_plain.unlink()
        kept.path.unlink()
        chunks.clear()

        sys.path.insert(0, str(REPO / "deployments_app" / "model_server"))
        import server  # the replica's own loader

        models = {"spam": (FIXTURES / "spam_pipeline.joblib").read_bytes()}
        import io

        import joblib
        import numpy as np
        from sklearn.ensemble import RandomForestClassifier

        rng = np.random.default_rng(0)
        x = rng.normal(size=(4000, 20))
        forest = RandomForestClassifier(n_estimators=args.forest_trees, random_state=0)
        forest.fit(x, (x[:, 0] + x[:, 1] > 0).astype(int))
        buf = io.BytesIO()
        joblib.dump(forest, buf)
        models["forest"] = buf.getvalue()
        for name, data in models.items():
            plain = tmp / f"{name}.joblib"
            plain.write_bytes(data)
            stored = storage.artifact_store([data])
            key_file = tmp / f"{name}.key"
            key_file.write_text(storage.artifact_data_key(stored.sha256).hex())
            results[f"{name}_mb"] = len(data) / CHUNK
            results[f"{name}_load_plain_ms"] = 1000 * _median_time(
                lambda p=plain: server.load_model(str(p), "joblib"), args.repeat
            )
            results[f"{name}_load_encrypted_ms"] = 1000 * _median_time(
                lambda s=stored, k=key_file: server.load_model(str(s.path), "joblib", str(k)),
                args.repeat,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        print(json.dumps({k: round(v, 1) for k, v in results.items()}))
        return 0
    print(f"store {args.size_mb} MB: plain {results['store_plain_mb_s']:.0f} MB/s, "
          f"encrypted {results['store_encrypted_mb_s']:.0f} MB/s")  # fmt: skip
    print(f"read  {args.size_mb} MB: plain {results['read_plain_mb_s']:.0f} MB/s, "
          f"encrypted {results['read_encrypted_mb_s']:.0f} MB/s")  # fmt: skip
    for name in ("spam", "forest"):
        print(f"server load_model {name} ({results[f'{name}_mb']:.1f} MB): "
              f"plain {results[f'{name}_load_plain_ms']:.0f} ms, "
              f"encrypted {results[f'{name}_load_encrypted_ms']:.0f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
