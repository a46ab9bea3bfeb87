"""SageMaker Python SDK v2 local mode against the image (run inside .venv-sdk2 by test_sdk.py).

    python sdk_v2_local.py IMAGE DATA_DIR OUT_DIR IMAGE_FILE

fit() on file:// channels (train/valid/test) -> model.tar.gz in OUT_DIR, deploy() locally,
predict() one image's bytes, delete the endpoint. No AWS is reachable: the caller sets fake
credentials and a region, and a user config with telemetry off. Prints one JSON line last.
"""

import json
import sys
import time

from sagemaker.deserializers import JSONDeserializer
from sagemaker.estimator import Estimator
from sagemaker.local import LocalSession
from sagemaker.serializers import IdentitySerializer

image, data_dir, out_dir, image_file = sys.argv[1:5]

session = LocalSession()
session.config = {"local": {"local_code": True}}

t0 = time.monotonic()
estimator = Estimator(
    image_uri=image,
    role="arn:aws:iam::111111111111:role/fake-sagemaker-role",
    instance_count=1,
    instance_type="local",
    output_path=f"file://{out_dir}",
    hyperparameters={"epochs": 1, "weights": "none", "arch": "resnet18", "image-size": 32,
                     "batch-size": 32, "num-workers": 0},
    sagemaker_session=session,
)
estimator.fit({ch: f"file://{data_dir}/{ch}" for ch in ("train", "valid", "test")})
fit_s = time.monotonic() - t0

predictor = estimator.deploy(initial_instance_count=1, instance_type="local",
                             serializer=IdentitySerializer("image/jpeg"),
                             deserializer=JSONDeserializer())
try:
    with open(image_file, "rb") as f:
        result = predictor.predict(f.read())
finally:
    predictor.delete_endpoint()
print(json.dumps({"model_data": estimator.model_data, "fit_s": round(fit_s, 1),
                  "total_s": round(time.monotonic() - t0, 1), "result": result}))
