from lightning_rlhf.data.errors import DataError
from lightning_rlhf.data.modules import PreferenceDataModule, SFTDataModule, TextDataModule
from lightning_rlhf.data.prompts import PromptDataModule
from lightning_rlhf.data.ranking import RankingDataModule
from lightning_rlhf.data.self_training import SelfTrainingDataModule
from lightning_rlhf.data.stepwise import StepwiseDataModule
from lightning_rlhf.data.unpaired import UnpairedDataModule

# The data module that reads each data kind an algorithm can declare.
DATA_MODULES = {
    "sft": SFTDataModule,
    "preference": PreferenceDataModule,
    "ranking": RankingDataModule,
    "unpaired": UnpairedDataModule,
    "prompt": PromptDataModule,
    "stepwise": StepwiseDataModule,
}

__all__ = ["DATA_MODULES", "DataError", "PreferenceDataModule", "PromptDataModule", "RankingDataModule", "SFTDataModule", "SelfTrainingDataModule", "StepwiseDataModule", "TextDataModule", "UnpairedDataModule"]
