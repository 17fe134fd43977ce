"""ACGAN (Odena, Olah & Shlens 2017): class-conditional DCGAN whose discriminator also predicts
the class.

G: DCGAN generator with the class embedding concatenated to ``z``. D: DCGAN trunk with two heads,
an (unconditional) real/fake logit and a linear auxiliary classifier on the 4x4 features.
Objective (Odena et al.): D minimises ``BCE_src(real, fake) + w * [CE(cls(real), y) + CE(cls(fake), y_fake)]``,
G minimises ``BCE_src_nonsat(fake) + w * CE(cls(fake), y_fake)``. With ``aux_loss="tac"`` (TAC-GAN, Gong et
al. 2019) D's classifier sees real images only, a twin head learns the generated classes, and G minimises
``... + w * [CE(cls(fake), y) - CE(twin(fake), y)]``. The class loss is
``F.cross_entropy`` on logits: the widely copied reference code applies Softmax then NLLLoss,
which is wrong (clvrai/ACGAN-PyTorch issues #3, #8).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from medbalance.data.dataset import DataInfo
from medbalance.models.augment import diff_augment
from medbalance.models.base import set_requires_grad
from medbalance.models.dcgan import DCGAN, DCGANDiscriminator, GANCommonParams
from medbalance.models.layers import chunked, eval_mode, module_device
from medbalance.models.losses import class_loss, d_loss, g_loss, r1_input, with_r1
from medbalance.models.registry import MODELS, ModelSpec


class ACGANParams(GANCommonParams):
    class_weight: float = Field(1.0, ge=0, description="weight of the auxiliary class loss (Odena et al.: 1)")
    aux_loss: Literal["acgan", "tac"] = Field(
        "acgan",
        description="acgan: D's classifier learns real and generated classes, G maximises its confidence (Odena "
        "et al.); tac: TAC-GAN (Gong et al. 2019), D's classifier learns real classes only, a twin classifier "
        "learns generated ones and G also maximises the twin's loss, which removes ACGAN's pull towards "
        "easily classified, low-diversity samples",
    )
    fake_labels: Literal["uniform", "batch"] = Field(
        "uniform",
        description="classes of generated samples during training: uniform over classes (Odena et al.) "
        "or the real batch's labels (follows the data's class distribution)",
    )


class ACGAN(DCGAN):
    """ACGAN: conditional DCGAN with an auxiliary classifier head on D (cross-entropy on logits)."""

    name = "acgan"
    needs = ("label",)

    def __init__(self, params: ACGANParams, info: DataInfo):
        super().__init__(params, info)

    def _is_conditional(self) -> bool:
        return True

    def build_discriminator(self) -> nn.Module:
        p = self.params
        D = DCGANDiscriminator(
            self.info.channels, self.size, p.ndf, p.max_mult, aux_classes=self.num_classes, norm=p.d_norm, mbstd=p.mbstd
        )
        if p.aux_loss == "tac":
            D.add_twin_classifier()
        return D

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        real, y_real = batch["image"], batch["label"]
        p = self.params
        n = real.shape[0]
        if p.fake_labels == "uniform":
            y_fake = torch.randint(0, self.num_classes, (n,), device=real.device)
        else:
            y_fake = y_real
        z = torch.randn(n, p.z_dim, device=real.device)
        y_fake, pairs = self._mode_seeking_labels(y_fake, n)
        # --- D step
        with self.autocast():
            fake = self.G(z, y_fake)
            real_in = r1_input(diff_augment(real, p.augment), p.r1_gamma)
            h_r = self.D.features(real_in)
            h_f = self.D.features(diff_augment(fake.detach(), p.augment))
            src_r, src_f = self.D.logits(h_r), self.D.logits(h_f)
            cls_r, cls_f = self.D.class_logits(h_r), self.D.class_logits(h_f)
            loss_d_src = d_loss(src_r, src_f, p.loss)
            # TAC: the classifier learns real classes only, the twin the generated ones
            fake_head = self.D.twin_logits(h_f) if p.aux_loss == "tac" else cls_f
            loss_d_cls = class_loss(cls_r, y_real) + class_loss(fake_head, y_fake)
            loss_d, r1 = with_r1(loss_d_src + p.class_weight * loss_d_cls, src_r, real_in, p.r1_gamma)
        self.optimize("D", loss_d)
        # --- G step
        set_requires_grad(self.D, False)
        try:
            with self.autocast():
                h = self.D.features(diff_augment(fake, p.augment))
                loss_g_src = g_loss(self.D.logits(h), p.loss)
                loss_g_cls = class_loss(self.D.class_logits(h), y_fake)
                if p.aux_loss == "tac":
                    loss_g_cls = loss_g_cls - class_loss(self.D.twin_logits(h), y_fake)
                loss_g, extra = self._with_mode_seeking(loss_g_src + p.class_weight * loss_g_cls, fake, z, pairs)
            self.optimize("G", loss_g)
        finally:
            set_requires_grad(self.D, True)
        return {
            **extra,
            **r1,
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "loss_d_src": loss_d_src.detach(),
            "loss_d_cls": loss_d_cls.detach(),
            "loss_g_cls": loss_g_cls.detach(),
            "acc_real": (cls_r.detach().argmax(1) == y_real).float().mean(),
            "acc_fake": (cls_f.detach().argmax(1) == y_fake).float().mean(),
        }

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Auxiliary-classifier logits ``(N, num_classes)`` (eval mode, float32)."""
        with eval_mode(self.D):
            return chunked(
                lambda x: self.D.class_logits(self.D.features(x.float())), [images], module_device(self.D), batch_size
            )

    @torch.no_grad()
    def discriminate(self, images: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
        """Real/fake logits ``(N,)`` of the source head (unconditional: ``labels`` is ignored)."""
        with eval_mode(self.D):
            return chunked(lambda x: self.D(x.float()), [images], module_device(self.D), batch_size)


MODELS.add(
    "acgan",
    ModelSpec(
        method=ACGAN,
        params=ACGANParams,
        presets={
            "paper": {"z_dim": 100, "ngf": 64, "ndf": 64, "max_mult": 16},
            # + DiffAugment and TAC-GAN's twin classifier: plain ACGAN gave one image per class on brain MRI even
            # after 15 min (within-class std 0.044 vs 0.116 with TAC; docs/models/dcgan_family.md); resize-convolution
            # in G as dcgan's cpu preset
            "cpu": {
                "z_dim": 64, "ngf": 32, "ndf": 32, "max_mult": 8, "augment": ["translation", "cutout"], "aux_loss": "tac",
                "upsample": "resize",
            },
        },
        description="ACGAN: class-conditional DCGAN with an auxiliary classifier on D (cross-entropy on logits)",
        paper="Odena, Olah & Shlens 2017 (arXiv 1610.09585)",
        batch_sizes={"paper": 100, "cpu": 16},  # Odena et al.: batch 100; cpu: as dcgan's
        # cpu: class-balanced batches; on the 10:3:1 phantom TAC-ACGAN then followed the class (docs/models.md)
        samplings={"cpu": "class_balanced"},
    ),
)
