"""``ogm-ge``: on-the-fly gradient modulation with generalisation enhancement, the balancing baseline of TAAF.

Follows Peng, Wei, Deng, Wang, Hu, "Balanced Multimodal Learning via On-the-fly Gradient Modulation" (CVPR 2022):
per batch each modality's score is the summed softmax probability of the true class from its unimodal logits (the
classifier's block over that modality's features, ``FusionNet.unimodal_logits``); the modality whose score ratio
rho to the other is above 1 gets its encoder's gradients scaled by ``1 - tanh(alpha (rho - 1))``, and Gaussian
noise with each gradient's own standard deviation is added to both modalities' gradients (GE), as the authors'
code does. It takes any of the fusions (``model=av-concat``, the paper's setting, ``av-sum`` or ``taaf``) of
``adapters/nets/fusion.py``; where it departs: the unimodal logits are per time step and averaged over time (the
network is spiking), and the modulation runs in every epoch (no end epoch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lifelong.adapters.nets.fusion import MODALITIES
from lifelong.components.taaf import BalanceConfig, _Balance, training_fusion
from lifelong.incremental.learner import TrainingState
from lifelong.platform.registry import register


@register("component", "ogm-ge", config=BalanceConfig,
          summary="OGM-GE (Peng et al. 2022): on-the-fly gradient modulation by unimodal confidence, with noise")
class GradientModulation(_Balance):
    """OGM-GE on the fusion extractor (see the module docstring)."""

    excludes = ("taaf",)

    def extra_loss(self, state: TrainingState) -> torch.Tensor | None:
        net, weight = training_fusion(state.model)
        with torch.no_grad():
            uni = net.unimodal_logits(weight)
            score = {m: float(F.softmax(uni[m].mean(0), dim=1).gather(1, state.y[:, None]).sum()) for m in MODALITIES}
        a, b = MODALITIES
        ratio = {a: score[a] / max(score[b], 1e-8), b: score[b] / max(score[a], 1e-8)}
        # the weaker modality keeps its gradient (k = 1) but, as in the authors' code, gets the noise too
        self._k = {m: 1.0 - float(torch.tanh(torch.tensor(self.config.alpha * (r - 1)))) if r > 1 else 1.0
                   for m, r in ratio.items()}
        return None

    def _noise(self) -> bool:
        return self.config.noise
