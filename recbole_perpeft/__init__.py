"""recbole-perpeft: personalised parameter-efficient fine-tuning for sequential recommendation.

A RecBole plugin: item encoders over multimodal foundation models (CLIP: image + title) adapted
with PEFT (LoRA, (IA)3, any peft config, IISAN), one adapter per user group (PerPEFT, WWW 2026).
"""

from recbole_perpeft.compat import restore_numpy_aliases

restore_numpy_aliases()

__version__ = "0.1.0"
