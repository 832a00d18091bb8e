"""What a defense costs the federation: accuracy and interpretability after one defended update.

Start from a digits checkpoint, let a client send a FedAvg update from a batch of its digits, and apply
the clean or the defended update. Report held-out accuracy, the cosine between the defended and clean
update, and the mean Pearson correlation between the Grad-CAM heatmaps of the two resulting models
(the paper's claim that TIP keeps explanations intact).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from tipcore import defenses
from tipcore.federation import data, models
from tipcore.pipeline.experiment import with_budget
from tipcore.federation.fl import RoundConfig, apply_update, client_update
from tipcore.signals.saliency import gradcam_map, heatmap_similarity
from tipcore.common.seeding import generator
from tipcore.federation.training import accuracy
from tipcore.pipeline.update_stats import update_cosine


@dataclass(frozen=True)
class UtilityRow:
    defense: str
    accuracy: float
    clean_accuracy: float
    heatmap_similarity: float
    update_cosine: float

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def compare(model_name: str, defense_names: list[str], *, batch: int = 32, local_steps: int = 4, lr: float = 0.05,
            clip: float = 5.0, epsilon: float = 5.0, delta: float = 1e-5, seed: int = 0,
            heatmap_images: int = 20) -> list[UtilityRow]:
    for name in defense_names:
        if name not in defenses.DEFENSES:
            raise ValueError(f"unknown defense '{name}'; choose one of: {', '.join(defenses.DEFENSES)}")
    global_model = models.build(model_name, weights="digits").eval()
    x_train, y_train = data.load_digits("train")
    x_test, y_test = data.load_digits("test")
    pick = torch.randperm(len(x_train), generator=generator(seed, "utility-batch"))[:batch]
    round_cfg = RoundConfig(mode="fedavg", batch_size=batch, local_steps=local_steps, lr=lr, clip=clip)
    clean, _ = client_update(global_model, x_train[pick], y_train[pick], round_cfg, generator=generator(seed, "defense"))
    clean_model = apply_update(global_model, clean)
    clean_acc = accuracy(clean_model, x_test, y_test)
    probe = range(min(heatmap_images, len(x_test)))
    clean_maps = [gradcam_map(clean_model, x_test[i: i + 1], int(y_test[i])) for i in probe]
    rows = []
    for name in defense_names:
        opts = defenses.bind_round(name, with_budget(name, {}, epsilon, delta), round_cfg)
        _, ctx = client_update(global_model, x_train[pick], y_train[pick], round_cfg, generator=generator(seed, "defense"))
        defended, _ = defenses.create(name, opts).protect(clean, ctx)
        model = apply_update(global_model, defended)
        sims = [heatmap_similarity(m, gradcam_map(model, x_test[i: i + 1], int(y_test[i]))) for m, i in zip(clean_maps, probe)]
        rows.append(UtilityRow(name, accuracy(model, x_test, y_test), clean_acc, float(np.mean(sims)),
                               update_cosine(dict(clean.tensors), dict(defended.tensors))))
    return rows
