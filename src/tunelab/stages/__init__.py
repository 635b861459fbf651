"""Registry of training stages: config name -> module with Config/build_datasets/compute_loss."""
from . import pretrain, sft

STAGES = {
    "pretrain": pretrain,
    "sft": sft,
}
