"""Registry of training stages: config name -> module with Config/build_datasets/compute_loss."""
from . import classify, dpo, pretrain, reward, rlhf, sft

STAGES = {
    "pretrain": pretrain,
    "sft": sft,
    "classify": classify,
    "reward": reward,
    "dpo": dpo,
    "rlhf": rlhf,
}
