"""Registry of adaptation methods: config name -> module with Config/apply/save/load."""
from . import adapter, freeze, full, head, ia3, lora, prefix, prompt

METHODS = {
    "full": full,
    "lora": lora,
    "freeze": freeze,
    "head": head,
    "adapter": adapter,
    "prefix": prefix,
    "prompt": prompt,
    "ia3": ia3,
}
