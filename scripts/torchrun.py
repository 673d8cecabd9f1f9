"""torchrun for the launch scripts (train.sh, the evaluate scripts, scripts/slurm_train.sh):
    python scripts/torchrun.py -m torch.distributed.run [torchrun arguments]
A failure of the workers ends with their one error line and their exit code (utils.distributed.torchrun)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.distributed import torchrun  # noqa: E402

if __name__ == "__main__":
    sys.exit(torchrun(sys.argv[1:]))
