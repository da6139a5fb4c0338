"""sentence-transformers behind MLServer: what a Python user would deploy for all-MiniLM-L6-v2.
A custom MLServer runtime (MLServer's HuggingFace runtime returns token embeddings for
`feature-extraction`, not the pooled sentence embedding) that takes the same request as
sluice's `minilm` (`text`, BYTES, [-1]) and answers the same output (`embedding`, FP32,
[-1, 384], mean-pooled and normalized), so one load generator drives both.

Settings (model-settings.json `parameters.extra`): `model_dir`, the sentence-transformers
folder; `threads`, PyTorch's intra-op threads (the same count sluice's graphs get).
"""

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse
from sentence_transformers import SentenceTransformer


class SentenceEmbedder(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra or {}
        torch.set_num_threads(int(extra.get("threads", 2)))
        self.model = SentenceTransformer(extra["model_dir"], device="cpu")
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = StringCodec.decode_input(payload.inputs[0])
        vectors = self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("embedding", vectors.astype(np.float32))],
        )
