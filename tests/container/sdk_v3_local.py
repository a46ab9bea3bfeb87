"""SageMaker Python SDK v3 ModelTrainer in LOCAL_CONTAINER mode against the image (run inside
.venv-sdk3 by test_sdk.py).

    python sdk_v3_local.py IMAGE DATA_DIR CODE_DIR WORK_DIR

The SDK mounts CODE_DIR as the `code` channel and replaces the image's entrypoint with its own
bash driver, which runs `python train.py <hyperparameters>`. No AWS is reachable: the caller sets
fake credentials, a region and a user config with telemetry off. Prints one JSON line last.
"""

import json
import os
import sys
import time

from sagemaker.train import ModelTrainer
from sagemaker.train.configs import Compute, InputData, SourceCode
from sagemaker.train.model_trainer import Mode

image, data_dir, code_dir, work_dir = sys.argv[1:5]

os.makedirs(work_dir, exist_ok=True)
t0 = time.monotonic()
trainer = ModelTrainer(
    training_mode=Mode.LOCAL_CONTAINER,
    training_image=image,
    role="arn:aws:iam::111111111111:role/fake-sagemaker-role",
    base_job_name="imgclf-v3-local",
    source_code=SourceCode(source_dir=code_dir, entry_script="train.py"),
    compute=Compute(instance_type="local_cpu", instance_count=1),
    hyperparameters={"epochs": 1, "weights": "none", "arch": "resnet18", "image-size": 32,
                     "batch-size": 32, "num-workers": 0},
    local_container_root=work_dir,
)
trainer.train(input_data_config=[InputData(channel_name=ch, data_source=os.path.join(data_dir, ch))
                                 for ch in ("train", "valid", "test")], wait=True)
files = sorted(os.path.relpath(os.path.join(d, f), work_dir)
               for d, _, fs in os.walk(work_dir) for f in fs)
print(json.dumps({"seconds": round(time.monotonic() - t0, 1), "files": files}))
