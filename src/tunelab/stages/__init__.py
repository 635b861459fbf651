"""Registry of training stages: config name -> module with Config/build_datasets/compute_loss."""
from . import classify, pretrain, sft

STAGES = {
    "pretrain": pretrain,
    "sft": sft,
    "classify": classify,
}
