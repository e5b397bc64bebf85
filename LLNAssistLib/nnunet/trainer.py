"""The nnU-Net trainer LLNAssist trains with, as Qiao et al. (Front Oncol 2025) did: nnU-Net's
default network and pipeline, mirroring off in training and inference (left and right differ), and
Dice : cross-entropy weighted 0.7 : 0.3. Imported only in the training process (needs nnunetv2)."""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
    nnUNetTrainerNoMirroring,
)

DICE_WEIGHT, CE_WEIGHT = 0.7, 0.3
# nnU-Net's predictor rebuilds the network from the trainer named in a checkpoint and looks for it
# only inside nnU-Net's own package. Ours has exactly nnUNetTrainerNoMirroring's network and
# inference (it differs only in the training loss), so its checkpoints name that one; the
# LLNAssist manifest beside the model records the real trainer and loss weights.
INFERENCE_TRAINER_NAME = "nnUNetTrainerNoMirroring"


class LLNAssistTrainer(nnUNetTrainerNoMirroring):
    def _build_loss(self):
        loss = super()._build_loss()
        inner = getattr(loss, "loss", loss)  # inside the deep-supervision wrapper
        inner.weight_dice, inner.weight_ce = DICE_WEIGHT, CE_WEIGHT
        return loss

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if self.local_rank != 0 or self.disable_checkpointing:
            return
        from ..model.checkpoint import load_checkpoint

        ckpt = load_checkpoint(filename)
        ckpt["trainer_name"] = INFERENCE_TRAINER_NAME
        ckpt["llnassist_trainer"] = {"class": type(self).__name__, "dice_weight": DICE_WEIGHT, "ce_weight": CE_WEIGHT}
        tmp = f"{filename}.part"
        torch.save(ckpt, tmp)
        import os

        os.replace(tmp, filename)
