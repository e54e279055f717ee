"""Trainers: RecBole's, made checkpoint-safe, and the PerPEFT stage schedule.

``<Model>Trainer`` here is used for plugin model ``<Model>``; other models get RecBole's
trainer wrapped by :func:`make_safe`.
"""

from recbole_perpeft.trainer.perpeft_trainer import PerPEFTTrainer
from recbole_perpeft.trainer.safe import SafeTrainerMixin, make_safe

__all__ = ["PerPEFTTrainer", "SafeTrainerMixin", "make_safe"]
