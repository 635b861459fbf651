"""Registry of adaptation methods: config name -> module with Config/apply/save/load."""
from . import full, lora

METHODS = {
    "full": full,
    "lora": lora,
}
