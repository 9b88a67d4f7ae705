from lightning_rlhf.data.errors import DataError
from lightning_rlhf.data.modules import PreferenceDataModule, SFTDataModule, TextDataModule

__all__ = ["DataError", "PreferenceDataModule", "SFTDataModule", "TextDataModule"]
