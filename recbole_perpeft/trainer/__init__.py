"""Trainers: RecBole's, made checkpoint-safe, and the PerPEFT stage schedule."""

from recbole_perpeft.trainer.safe import SafeTrainerMixin, make_safe

__all__ = ["SafeTrainerMixin", "make_safe"]
