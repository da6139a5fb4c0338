"""Ray Serve's model multiplexing, for benches/many-models/ray.sh: one deployment whose
replica holds at most MAX_MODELS models (Ray evicts the least recently used past it), each
loaded on first use from MODEL_DIR/<model id>/model.joblib, the model id taken from the
`serve_multiplexed_model_id` header as Ray documents. Answers `{"predict": [labels]}` for a
KServe-style JSON body (`{"inputs": [{"data": [...64 floats per row]}]}`).

    MODEL_DIR=... MAX_MODELS=1000 serve run app:digits
"""

import os

import joblib
import numpy as np
from ray import serve
from starlette.requests import Request

MODEL_DIR = os.environ["MODEL_DIR"]
MAX_MODELS = int(os.environ.get("MAX_MODELS", "1000"))


@serve.deployment(num_replicas=1, max_ongoing_requests=64)
class Digits:
    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS)
    async def model(self, model_id: str):
        return joblib.load(os.path.join(MODEL_DIR, model_id, "model.joblib"))

    async def __call__(self, request: Request):
        model = await self.model(serve.get_multiplexed_model_id())
        body = await request.json()
        rows = np.asarray(body["inputs"][0]["data"], dtype=np.float32).reshape(-1, 64)
        return {"predict": model.predict(rows).tolist()}


digits = Digits.bind()


if __name__ == "__main__":
    # Ray's HTTP proxy on loopback at PORT, the app at /, until killed.
    import time

    serve.start(http_options={"host": "127.0.0.1", "port": int(os.environ.get("PORT", "18100"))})
    serve.run(digits, route_prefix="/")
    print("ready", flush=True)
    while True:
        time.sleep(3600)
