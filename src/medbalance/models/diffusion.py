"""Class- and mask-conditional diffusion models: ``diffusion`` (pixel space) and ``latent-diffusion``.

Both are :class:`~medbalance.models.base.GANMethod` subclasses, so the engine (run folder, safetensors
checkpoints, exact resume, EMA of ``G``, sample grids, TensorBoard, DDP) and every synthesis path
(``generate``, ``rebalance``, ``GenerativeOverSampler``, ``load_run``) work unchanged. docs/models/diffusion.md.

Networks are MONAI's generative blocks, not copies: ``G`` is a :class:`monai.networks.nets.DiffusionModelUNet`
(or :class:`~monai.networks.nets.SPADEDiffusionModelUNet` with ``mask_conditioning``: the one-hot label map
modulates every normalisation, Park et al. 2019 / the SPADE-LDM of Fernandez et al. 2022), the first stage of
the latent model is a :class:`monai.networks.nets.AutoencoderKL`, and the noise schedules and update rules are
MONAI's :class:`~monai.networks.schedulers.RFlowScheduler` (rectified flow: velocity target ``x0 - noise``,
Euler steps) or :class:`~monai.networks.schedulers.DDIMScheduler` (DDPM training, deterministic DDIM
sampling, eta = 0). The sampling loop is ours because MONAI's inferers pass no class labels to the U-Net.

Class conditioning: the U-Net's class embedding (``num_class_embeds = K + 1``; index ``K`` is the *null*
class). During training each label is replaced by the null class with probability ``label_dropout``; sampling
uses classifier-free guidance (Ho & Salimans 2022): ``out = out(null) + w * (out(class) - out(null))`` with
``w = guidance_scale`` (the conditional and unconditional passes run as one batch of 2B). The mask, when used,
is given to both passes (guidance acts on the class only).

Sampling is seeded (the initial noise is drawn on the CPU from ``generator``; the DDIM (eta = 0) and
rectified-flow updates are deterministic), batched, and runs under ``self.autocast`` (bf16 where the engine
enables it).

Latent model, two phases inside one run (one ``train.steps`` count, split by ``ae_steps``):
steps ``[0, ae_steps)`` train the autoencoder (L1 reconstruction + ``kl_weight`` * KL), the U-Net is not
touched; from step ``ae_steps`` on, the autoencoder is frozen, its latent means (times ``latent_scale``, set
once from the first diffusion batch to 1 / std as in Rombach et al. 2022, stored as a buffer of ``AE`` and so in
every checkpoint) are the diffusion model's data. Checkpoints hold ``G`` (U-Net), ``G_ema`` and ``AE``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from medbalance.config import BaseConfig
from medbalance.data.dataset import DataInfo
from medbalance.errors import ConfigError, DataError
from medbalance.models.base import GANMethod
from medbalance.models.layers import cpu_noise, eval_mode, module_device
from medbalance.models.registry import MODELS, ModelSpec


# ============================================================================ params
class DiffusionParams(BaseConfig):
    """Parameters of the pixel-space diffusion model (``paper`` / ``cpu`` presets in the registry)."""

    channels: list[int] = Field([128, 256, 256], min_length=2, description="U-Net width per level")
    num_res_blocks: int = Field(2, ge=1, description="residual blocks per U-Net level")
    attention_levels: list[bool] = Field(
        [False, True, True], description="self-attention per level (same length as channels)"
    )
    num_head_channels: int = Field(64, ge=1, description="channels per attention head")
    norm_num_groups: int = Field(32, ge=1, description="GroupNorm groups (must divide every width)")
    class_conditional: bool = Field(True, description="class embedding with classifier-free guidance")
    label_dropout: float = Field(0.1, ge=0, lt=1, description="share of labels replaced by the null class in training")
    guidance_scale: float = Field(2.0, ge=0, description="classifier-free guidance weight at sampling (1 = no guidance)")
    mask_conditioning: bool = Field(False, description="SPADE U-Net conditioned on the label map (needs masks)")
    spade_hidden: int = Field(64, ge=1, description="hidden width of the SPADE label-map MLP")
    objective: Literal["rflow", "ddpm"] = Field(
        "rflow", description="rflow: rectified flow (velocity), Euler sampling; ddpm: DDPM noise schedule, DDIM sampling"
    )
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = Field(
        "epsilon", description="ddpm only: what the U-Net predicts"
    )
    beta_schedule: Literal["linear_beta", "scaled_linear_beta", "cosine"] = Field(
        "linear_beta", description="ddpm only: MONAI noise schedule"
    )
    beta_start: float = Field(1e-4, gt=0, description="ddpm only (linear schedules)")
    beta_end: float = Field(2e-2, gt=0, description="ddpm only (linear schedules)")
    num_train_timesteps: int = Field(1000, ge=2)
    timestep_sampling: Literal["uniform", "logit-normal"] = Field(
        "uniform", description="rflow only: training timestep distribution"
    )
    sample_steps: int = Field(25, ge=1, description="sampling steps (DDIM or rectified-flow Euler)")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the U-Net")
    weight_decay: float = Field(0.0, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> "DiffusionParams":
        if len(self.attention_levels) != len(self.channels):
            raise ValueError(
                f"attention_levels has {len(self.attention_levels)} entries, channels has {len(self.channels)}"
            )
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={self.norm_num_groups} does not divide the widths {bad}")
        if self.sample_steps > self.num_train_timesteps:
            raise ValueError(f"sample_steps={self.sample_steps} exceeds num_train_timesteps={self.num_train_timesteps}")
        return self


class LatentDiffusionParams(DiffusionParams):
    """Pixel-diffusion parameters for the U-Net in latent space, plus the first stage (AutoencoderKL)."""

    ae_channels: list[int] = Field(
        [64, 128, 128], min_length=2, description="autoencoder width per level (len - 1 halvings of each side)"
    )
    ae_num_res_blocks: int = Field(2, ge=1)
    ae_norm_num_groups: int = Field(32, ge=1)
    ae_attention: bool = Field(False, description="self-attention blocks in the middle of encoder and decoder")
    latent_channels: int = Field(4, ge=1)
    ae_steps: int = Field(2000, ge=0, description="phase 1: the first ae_steps steps train the autoencoder only")
    ae_lr: float = Field(2e-4, gt=0)
    kl_weight: float = Field(1e-6, ge=0, description="weight of the KL term of the autoencoder")

    @model_validator(mode="after")
    def _check_ae(self) -> "LatentDiffusionParams":
        bad = [c for c in self.ae_channels if c % self.ae_norm_num_groups]
        if bad:
            raise ValueError(f"ae_norm_num_groups={self.ae_norm_num_groups} does not divide the widths {bad}")
        return self


# ============================================================================ helpers
def one_hot_nd(mask: torch.Tensor, num_labels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, *spatial) int label indices -> (B, num_labels, *spatial) one-hot (2D and 3D)."""
    return F.one_hot(mask.long(), num_labels).movedim(-1, 1).to(dtype)


def sampler_name(objective: str) -> str:
    return "rflow-euler" if objective == "rflow" else "ddim"


class LatentAutoencoder(nn.Module):
    """MONAI's AutoencoderKL plus ``latent_scale`` (a buffer: 0 until set from the first diffusion batch)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("latent_scale", torch.zeros(1))

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encode(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.decode(z)


# ============================================================================ pixel diffusion
class Diffusion(GANMethod):
    """Class- (and optionally label-map-) conditional diffusion model in pixel space."""

    name = "diffusion"
    needs = ("label",)
    reports_memorization: ClassVar[bool] = True  # `medbalance train` writes memorization.json after training

    def __init__(self, params: DiffusionParams, info: DataInfo):
        super().__init__(params, info)
        shape = tuple(int(s) for s in info.spatial_shape)
        if len(shape) not in (2, 3):
            raise ConfigError(f"model {self.name!r} needs 2D or 3D images; got spatial shape {shape}")
        self.spatial_dims = len(shape)
        self.num_classes = info.num_classes
        self.label_nc = 0
        if params.mask_conditioning:
            if info.num_mask_labels < 2:
                raise ConfigError(
                    f"model {self.name!r} with mask_conditioning needs label maps with at least 2 values "
                    "(manifest mask column or NIfTI labels)"
                )
            self.label_nc = info.num_mask_labels
            self.needs = ("label", "mask")  # instance attribute: the engine and load_run read method.needs
        self._build_first_stage()
        space_shape, space_ch = self.space_shape(), self.space_channels()
        f = 2 ** (len(params.channels) - 1)
        if any(s % f for s in space_shape):
            raise ConfigError(
                f"model {self.name!r}: the U-Net's {len(params.channels)} levels need sides divisible by {f}; the "
                f"{'latent' if space_shape != shape else 'image'} is {'x'.join(map(str, space_shape))} "
                "(change data.image_size or the number of levels)"
            )
        self.G = self._build_unet(space_ch)

    # ------------------------------------------------------------------ construction
    def _build_first_stage(self) -> None:
        """Pixel model: nothing (the latent model builds its autoencoder here)."""

    def space_shape(self) -> tuple[int, ...]:
        """Spatial shape of what the U-Net denoises."""
        return tuple(int(s) for s in self.info.spatial_shape)

    def space_channels(self) -> int:
        return self.info.channels

    def _build_unet(self, ch: int) -> nn.Module:
        from monai.networks.nets import DiffusionModelUNet, SPADEDiffusionModelUNet

        p = self.params
        kw: dict[str, Any] = dict(
            spatial_dims=self.spatial_dims,
            in_channels=ch,
            out_channels=ch,
            num_res_blocks=p.num_res_blocks,
            channels=tuple(p.channels),
            attention_levels=tuple(p.attention_levels),
            norm_num_groups=p.norm_num_groups,
            num_head_channels=p.num_head_channels,
            num_class_embeds=self.num_classes + 1 if p.class_conditional else None,
        )
        if p.mask_conditioning:
            return SPADEDiffusionModelUNet(label_nc=self.label_nc, spade_intermediate_channels=p.spade_hidden, **kw)
        return DiffusionModelUNet(**kw)

    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G}

    def configure_optimizers(self) -> dict[str, tuple[torch.optim.Optimizer, nn.Module]]:
        p = self.params
        opt = torch.optim.AdamW(self.G.parameters(), lr=p.lr, betas=(p.beta1, p.beta2), weight_decay=p.weight_decay)
        return {"G": (opt, self.G)}

    # ------------------------------------------------------------------ schedules
    def _scheduler(self):
        """A fresh MONAI scheduler (sampling mutates its timesteps, so every call gets its own)."""
        from monai.networks.schedulers import DDIMScheduler, RFlowScheduler

        p = self.params
        if p.objective == "rflow":
            return RFlowScheduler(
                num_train_timesteps=p.num_train_timesteps, use_discrete_timesteps=True, sample_method=p.timestep_sampling
            )
        sched_args = {} if p.beta_schedule == "cosine" else {"beta_start": p.beta_start, "beta_end": p.beta_end}
        return DDIMScheduler(
            num_train_timesteps=p.num_train_timesteps,
            schedule=p.beta_schedule,
            clip_sample=self._clip_sample(),
            prediction_type=p.prediction_type,
            **sched_args,
        )

    def _clip_sample(self) -> bool:
        return True  # pixel space: x0 lies in [-1, 1]

    def sampling_provenance(self) -> dict[str, Any]:
        """How ``generate`` samples (written into exported manifests and model cards)."""
        p = self.params
        return {
            "sampler": sampler_name(p.objective),
            "steps": int(p.sample_steps),
            "guidance_scale": float(p.guidance_scale) if p.class_conditional else None,
            "objective": p.objective,
            "space": "pixel",
        }

    # ------------------------------------------------------------------ conditioning
    def _seg(self, masks: torch.Tensor | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        if not self.params.mask_conditioning:
            return None
        if masks is None:
            raise ConfigError(f"model {self.name!r} (mask_conditioning) generates from label maps: masks are required")
        if masks.is_floating_point():
            raise ConfigError("masks must be integer label indices (indices into info.mask_values)")
        if tuple(masks.shape[1:]) != tuple(self.info.spatial_shape):
            raise ConfigError(
                f"masks must have shape (B, {', '.join(map(str, self.info.spatial_shape))}); got {tuple(masks.shape)}"
            )
        if masks.numel() and (int(masks.min()) < 0 or int(masks.max()) >= self.label_nc):
            raise ConfigError(f"mask index out of range 0..{self.label_nc - 1} (indices into info.mask_values)")
        return one_hot_nd(masks.to(device), self.label_nc, dtype)

    def _run_unet(
        self, net: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, seg: torch.Tensor | None
    ) -> torch.Tensor:
        if seg is not None:
            return net(x, t, seg, class_labels=labels)
        return net(x, t, class_labels=labels)

    # ------------------------------------------------------------------ data <-> diffusion space
    def to_space(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def from_space(self, x: torch.Tensor) -> torch.Tensor:
        return x

    # ------------------------------------------------------------------ training
    def diffusion_loss(self, batch: dict[str, torch.Tensor], x0: torch.Tensor | None = None) -> torch.Tensor:
        """The denoising loss on one batch (global RNG: label dropout, timesteps, noise); ``x0``: the batch
        already in diffusion space (default: ``to_space(batch["image"])``)."""
        p = self.params
        if x0 is None:
            x0 = self.to_space(batch["image"])
        b, dev = x0.shape[0], x0.device
        labels = None
        if p.class_conditional:
            labels = batch["label"].to(dev).long()
            drop = torch.rand(b, device=dev) < p.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        seg = None
        if p.mask_conditioning:
            if "mask" not in batch:
                raise DataError(f"model {self.name!r} (mask_conditioning) needs label maps: the batch has no 'mask'")
            seg = one_hot_nd(batch["mask"], self.label_nc, x0.dtype)
        sched = self._scheduler()
        noise = torch.randn_like(x0)
        if p.objective == "rflow":
            t = sched.sample_timesteps(x0)
            xt = sched.add_noise(x0, noise, t)
            target = x0 - noise
        else:
            t = torch.randint(0, p.num_train_timesteps, (b,), device=dev).long()
            xt = sched.add_noise(x0, noise, t)
            target = {"epsilon": noise, "sample": x0}.get(p.prediction_type)
            if target is None:
                target = sched.get_velocity(x0, noise, t)
        with self.autocast():
            pred = self._run_unet(self.G, xt, t, labels, seg)
        return F.mse_loss(pred.float(), target.float())

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        loss = self.diffusion_loss(batch)
        self.optimize("G", loss)
        return {"G": loss.detach()}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_space(
        self,
        net: nn.Module,
        labels: torch.Tensor,
        seg: torch.Tensor | None,
        generator: torch.Generator | None,
        steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """Denoise seeded noise into the diffusion space (pixels or latents), with classifier-free guidance."""
        p = self.params
        device = module_device(net)
        b = labels.shape[0]
        x = cpu_noise((b, self.space_channels(), *self.space_shape()), generator, device)
        steps = int(p.sample_steps if steps is None else steps)
        w = float(p.guidance_scale if guidance_scale is None else guidance_scale)
        sched = self._scheduler()
        sched.set_timesteps(steps, device=device)
        ts = sched.timesteps
        cond = labels if p.class_conditional else None
        guided = p.class_conditional and w != 1.0
        if guided:
            null = torch.full_like(labels, self.num_classes)
            lab2 = torch.cat([labels, null])
            seg2 = None if seg is None else torch.cat([seg, seg])
        for i, t in enumerate(ts):
            tt = t.expand(b).to(device)
            with self.autocast():
                if guided:
                    out = self._run_unet(net, torch.cat([x, x]), torch.cat([tt, tt]), lab2, seg2).float()
                    o_c, o_u = out.chunk(2)
                    out = o_u + w * (o_c - o_u)
                else:
                    out = self._run_unet(net, x, tt, cond, seg).float()
            if p.objective == "rflow":
                nxt = ts[i + 1] if i + 1 < len(ts) else torch.zeros_like(t)
                x, _ = sched.step(out, t, x, nxt)
            else:
                x, _ = sched.step(out, int(t), x)
        return x

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        masks: torch.Tensor | None = None,
        conditions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        G: nn.Module | None = None,
    ) -> torch.Tensor:
        """Images in [-1, 1], shape (B, C, *spatial): ``sample_steps`` DDIM / rectified-flow steps with guidance.

        ``generator`` seeds the initial noise (the updates are deterministic), so the output is a function of
        the seed. ``conditions`` are not used."""
        net = G if G is not None else self.G
        device = module_device(net)
        if labels is None:
            raise ConfigError(f"model {self.name!r} generates per class: labels are required")
        labels = torch.as_tensor(labels).to(device).long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ConfigError(f"class index out of range 0..{self.num_classes - 1}")
        seg = self._seg(masks, device, torch.float32)
        with eval_mode(net):
            x = self.sample_space(net, labels, seg, generator)
            with self.autocast():
                img = self.from_space(x)
        return img.float().clamp(-1, 1)


# ============================================================================ latent diffusion
class LatentDiffusion(Diffusion):
    """Diffusion in the latent space of a small AutoencoderKL trained first in the same run."""

    name = "latent-diffusion"
    phase_param = "ae_steps"  # autoencoder steps first, then the (2x faster at 64 px) latent U-Net's

    def _build_first_stage(self) -> None:
        from monai.networks.nets import AutoencoderKL

        p = self.params
        n = len(p.ae_channels)
        f = 2 ** (n - 1)
        shape = tuple(int(s) for s in self.info.spatial_shape)
        if any(s % f for s in shape):
            raise ConfigError(
                f"model {self.name!r}: the autoencoder's {n} levels need image sides divisible by {f}; got "
                f"{'x'.join(map(str, shape))} (change data.image_size or ae_channels)"
            )
        self.AE = LatentAutoencoder(
            AutoencoderKL(
                spatial_dims=self.spatial_dims,
                in_channels=self.info.channels,
                out_channels=self.info.channels,
                channels=tuple(p.ae_channels),
                latent_channels=p.latent_channels,
                num_res_blocks=p.ae_num_res_blocks,
                attention_levels=tuple([False] * n),
                norm_num_groups=p.ae_norm_num_groups,
                with_encoder_nonlocal_attn=p.ae_attention,
                with_decoder_nonlocal_attn=p.ae_attention,
            )
        )
        self._scale_ready = False

    def space_shape(self) -> tuple[int, ...]:
        f = 2 ** (len(self.params.ae_channels) - 1)
        return tuple(int(s) // f for s in self.info.spatial_shape)

    def space_channels(self) -> int:
        return self.params.latent_channels

    def _clip_sample(self) -> bool:
        return False  # latents are not bounded

    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G, "AE": self.AE}

    def configure_optimizers(self) -> dict[str, tuple[torch.optim.Optimizer, nn.Module]]:
        p = self.params
        opts = super().configure_optimizers()
        opts["AE"] = (torch.optim.Adam(self.AE.parameters(), lr=p.ae_lr), self.AE)
        return opts

    def sampling_provenance(self) -> dict[str, Any]:
        out = super().sampling_provenance()
        out["space"] = f"latent {self.space_channels()}x{'x'.join(map(str, self.space_shape()))}"
        out["latent_scale"] = float(self.AE.latent_scale)
        return out

    # ------------------------------------------------------------------ latent space
    def _scale(self) -> torch.Tensor:
        s = self.AE.latent_scale
        return torch.where(s > 0, s, torch.ones_like(s))

    def to_space(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), eval_mode(self.AE), self.autocast():
            z = self.AE.encode_mean(images)
        return z.float() * self._scale().to(z.device)

    def from_space(self, x: torch.Tensor) -> torch.Tensor:
        return self.AE.decode(x / self._scale().to(x.device))

    @torch.no_grad()
    def _set_latent_scale(self, images: torch.Tensor) -> None:
        """1 / std of the latent means of this batch (averaged over processes under DDP), once per run."""
        if not self._scale_ready:
            self._scale_ready = bool(float(self.AE.latent_scale) > 0)  # resumed: loaded from the checkpoint
        if self._scale_ready:
            return
        with eval_mode(self.AE), self.autocast():
            z = self.AE.encode_mean(images).float()
        var = z.var().reshape(1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(var)
            var /= torch.distributed.get_world_size()
        self.AE.latent_scale.copy_(1.0 / var.clamp_min(1e-12).sqrt())
        self._scale_ready = True

    # ------------------------------------------------------------------ training
    def autoencoder_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(L1 + kl_weight * KL, detached parts, latent means)."""
        with self.autocast():
            recon, mu, sigma = self.AE.net(images)
        mu, sigma = mu.float(), sigma.float()
        rec = F.l1_loss(recon.float(), images)
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2).clamp_min(1e-12)) - 1).flatten(1).sum(1).mean()
        total = rec + self.params.kl_weight * kl
        return total, {"AE_rec": rec.detach(), "AE_kl": kl.detach()}, mu.detach()

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Phase 1 (step < ae_steps): one autoencoder update; ``G`` is then the denoising loss of the untouched
        U-Net on this batch's latents (normalised by their std), so that ``losses.csv`` (whose columns are fixed
        by the first row) and the best-checkpoint metric have a finite ``G`` from the start. Phase 2: one U-Net
        update; the frozen autoencoder's losses are not measured (NaN)."""
        if step < self.params.ae_steps:
            total, logs, mu = self.autoencoder_loss(batch["image"])
            self.optimize("AE", total)
            with torch.no_grad():
                g = self.diffusion_loss(batch, x0=mu / mu.std().clamp_min(1e-6))
            return {"G": g.detach(), **logs, "AE": total.detach()}
        self._set_latent_scale(batch["image"])
        logs = super().training_step(batch, step)
        nan = torch.full((), float("nan"), device=logs["G"].device)
        return {**logs, "AE_rec": nan, "AE_kl": nan, "AE": nan}


# ============================================================================ presets
# pixel `paper`: the 2D DDPM of Pinaya et al. (MONAI Generative Models tutorial 2d_ddpm: widths 128/256/256,
# attention on the two deeper levels, 1000 linear-beta steps, epsilon), trained with label dropout for CFG.
DIFFUSION_PAPER: dict[str, Any] = {
    "channels": [128, 256, 256], "attention_levels": [False, True, True], "num_res_blocks": 1,
    "num_head_channels": 256, "norm_num_groups": 32, "objective": "ddpm", "prediction_type": "epsilon",
    "beta_schedule": "linear_beta", "num_train_timesteps": 1000, "sample_steps": 50, "guidance_scale": 2.0,
    "label_dropout": 0.1, "lr": 2.5e-5, "spade_hidden": 128,
}  # fmt: skip
# pixel `cpu`: a 1.1 M-parameter U-Net at 64 px (three levels, attention only at 16x16), rectified flow; one thread,
# fp32, batch 16: 8.7 img/s training, 0.5 img/s sampling (20 steps with guidance): too slow for minutes on a CPU
DIFFUSION_CPU: dict[str, Any] = {
    "channels": [32, 64, 64], "attention_levels": [False, False, True], "num_res_blocks": 1,
    "num_head_channels": 32, "norm_num_groups": 16, "objective": "rflow", "sample_steps": 20,
    "guidance_scale": 2.0, "label_dropout": 0.1, "lr": 5e-4, "spade_hidden": 32,
}  # fmt: skip
# latent `paper`: MONAI's BraTS 2D latent diffusion model (Project-MONAI/tutorials generation/2d_ldm,
# config_train_32g.json, after Pinaya et al. 2022): AutoencoderKL 64/128/256 (4x per side), 2 res blocks, 1 latent
# channel, non-local attention, lr 5e-5, KL 1e-6; latent U-Net 32/64/128/256 with attention on the three deeper
# levels, 32-channel heads, 2 res blocks, lr 1e-5; 1000-step scaled-linear DDPM schedule (0.0015-0.0195), epsilon.
# Differences: no perceptual / adversarial autoencoder loss, 50 DDIM steps with guidance instead of 1000 DDPM steps.
LATENT_PAPER: dict[str, Any] = {
    "ae_channels": [64, 128, 256], "ae_num_res_blocks": 2, "latent_channels": 1, "ae_attention": True,
    "ae_norm_num_groups": 32, "ae_steps": 20000, "ae_lr": 5e-5, "kl_weight": 1e-6,
    "channels": [32, 64, 128, 256], "attention_levels": [False, True, True, True], "num_res_blocks": 2,
    "num_head_channels": 32, "norm_num_groups": 32, "objective": "ddpm", "prediction_type": "epsilon",
    "beta_schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0195, "num_train_timesteps": 1000,
    "sample_steps": 50, "guidance_scale": 2.0, "label_dropout": 0.1, "lr": 1e-5, "spade_hidden": 128,
}  # fmt: skip
# latent `cpu`: 64 px -> 16x16x4 with a 0.25 M-parameter AE (500 steps of batch 16 first), then a 1.1 M-parameter
# rectified-flow U-Net on the latents. One thread, 64 px, fp32 (this CPU has no native bf16), batch 16: AE 34 img/s,
# latent U-Net 78 img/s, sampling 9.6 img/s at 20 steps with guidance (AE widths 32/64/64 and U-Net 64/128/128 were
# 10, 31 and 2.8 img/s). Guidance 4: on brain-tumor-mri (64 px, 4500 steps) class following by the independent
# classifier rose from 0.57 (guidance 2) to 0.74 at a within-class std of 0.139 instead of 0.146 (docs/models/diffusion.md)
LATENT_CPU: dict[str, Any] = {
    "ae_channels": [16, 32, 64], "ae_num_res_blocks": 1, "latent_channels": 4, "ae_attention": False,
    "ae_norm_num_groups": 16, "ae_steps": 500, "ae_lr": 1e-3, "kl_weight": 1e-6,
    "channels": [32, 64, 64], "attention_levels": [False, False, True], "num_res_blocks": 1,
    "num_head_channels": 32, "norm_num_groups": 16, "objective": "rflow", "sample_steps": 20,
    "guidance_scale": 4.0, "label_dropout": 0.1, "lr": 5e-4, "spade_hidden": 32,
}  # fmt: skip

for _name, _method, _params, _presets, _description, _paper, _lengths, _help in (
    ("diffusion", Diffusion, DiffusionParams, {"paper": DIFFUSION_PAPER, "cpu": DIFFUSION_CPU},
     "Class-conditional diffusion U-Net in pixel space (MONAI), classifier-free guidance; "
     "mask_conditioning=true: SPADE U-Net on the label map",
     "Ho et al. 2020 / Pinaya et al. 2022 (MONAI Generative); CFG: Ho & Salimans 2022",
     # paper: the MONAI 2D DDPM tutorial's 150 epochs; cpu: the default length
     {"paper": {"epochs": 150}, "cpu": {"steps": 2000}},
     "class/mask-conditional pixel diffusion (MONAI DiffusionModelUNet)"),
    ("latent-diffusion", LatentDiffusion, LatentDiffusionParams, {"paper": LATENT_PAPER, "cpu": LATENT_CPU},
     "Latent diffusion: AutoencoderKL (phase 1, ae_steps) then a class-conditional diffusion U-Net "
     "on its latents, classifier-free guidance; mask_conditioning=true: SPADE U-Net",
     "Rombach et al. 2022; Pinaya et al. 2022 (brain LDM, MONAI Generative); Medfusion (Müller-Franzes et al. 2023)",
     # cpu: 500 autoencoder + 4000 latent steps (about 18 min on one thread of this CPU at 64 px); paper: 20000
     # autoencoder + 80000 latent steps (our choice; the MONAI tutorial trains each stage for 1000+ epochs)
     {"paper": {"steps": 100000}, "cpu": {"steps": 4500}},
     "class/mask-conditional latent diffusion (MONAI AutoencoderKL + DiffusionModelUNet)"),
):
    MODELS.add(
        _name,
        ModelSpec(method=_method, params=_params, presets=_presets, description=_description, paper=_paper,
                  batch_sizes={"paper": 32, "cpu": 16}, ema_decays={"paper": 0.9999, "cpu": 0.995},
                  train_lengths=_lengths),
        help=_help,
    )
