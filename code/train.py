"""SageMaker training entry point (SAGEMAKER_PROGRAM=train.py); also runs on a laptop.

    python code/train.py --data-dir DIR --model-dir OUT --epochs 3 --weights none
    python code/train.py --help
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from imgclf.training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
