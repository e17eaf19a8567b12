"""AnoGAN (latent mapping by back-propagation) and f-AnoGAN (a trained encoder) on one DCGAN.

Both train a DCGAN on normal images only (``train_gan``), then score a query image by how well the
generator can reproduce it: a pixel residual plus a residual on the discriminator's features.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from cxrad.detector import TrainedDetector
from cxrad.training import (TrainConfig, batches, fit_epochs, load_module, loss_step, map_batches, progress_bar,
                         resolve_device, run_key, to_tensor, wrap_ddp)
from cxrad.models.anogan.model import Discriminator, Encoder, Generator, check_size

OPTIMIZERS = ("adam", "rmsprop")
#: the settings that define the GAN: an f-AnoGAN given an AnoGAN's checkpoint_dir with these equal reuses its GAN
GAN_SETTINGS = ("image_size", "resize", "seed", "batch_size", "z_dim", "width", "optimizer", "lr_d", "lr_g")


def _signed(x01: torch.Tensor) -> torch.Tensor:
    return x01 * 2 - 1


def izif_terms(x: torch.Tensor, gz: torch.Tensor, D: Discriminator, kappa: float) -> tuple[torch.Tensor, ...]:
    """f-AnoGAN's per-image terms for images x and their reconstructions G(E(x)), both in [-1, 1]: mean squared
    pixel residual (grey levels in [0, 1]), feature residual, and their sum weighted by kappa; the detector and
    its ONNX graph both score with this."""
    residual = ((x - gz) / 2).pow(2).flatten(1).mean(1)
    discrimination = (D.features(x) - D.features(gz)).pow(2).mean(1)
    return residual, discrimination, residual + kappa * discrimination


@dataclass(repr=False, eq=False)
class _GANDetector(TrainedDetector):
    """What AnoGAN and f-AnoGAN share: the DCGAN, its training, persistence and the feature layer.

    Parameters
    ----------
    z_dim : int
        Length of the latent vector z.
    width : int
        Channels of the DCGAN's widest generator layer / first discriminator layer.
    optimizer : str
        'adam' (DCGAN's betas 0.5, 0.999) or 'rmsprop' (the TB report).
    lr_d : float
        Discriminator learning rate.
    lr_g : float
        Generator learning rate.
    """

    components: ClassVar[tuple[str, ...]] = ("residual", "discrimination")
    supports_warm_start: ClassVar[bool] = False  # the GAN is trained from scratch (or resumed from its checkpoint)

    image_size: int = 64
    epochs: int = 100
    z_dim: int = 100
    width: int = 64
    optimizer: str = "adam"
    lr_d: float = 2e-4
    lr_g: float = 2e-4

    def __post_init__(self):
        check_size(self.image_size)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")

    @property
    def architecture_name(self) -> str:
        return f"DCGAN {self.image_size}px, z {self.z_dim}, width {self.width}"

    def _ckpt_dir(self, part: str) -> str | None:
        return str(Path(self.checkpoint_dir) / part) if self.checkpoint_dir else None

    # ------------------------------------------------------------------------------------ GAN training
    def train_gan(self, train: np.ndarray) -> None:
        """Non-saturating DCGAN training on normal images; resumes from ``checkpoint_dir/gan``."""
        if self.warm_start:
            raise ValueError(f"{self.kind} cannot start from saved weights (warm_start); train it afresh")
        device = resolve_device(self.device)
        torch.manual_seed(self.seed)
        G, D = Generator(self.image_size, self.z_dim, self.width).to(device), \
            Discriminator(self.image_size, self.width).to(device)
        betas = (0.5, 0.999) if self.optimizer == "adam" else (0.9, 0.999)
        cfg = TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr_g, optimizer=self.optimizer,
                          betas=betas, seed=self.seed, device=self.device, checkpoint_dir=self._ckpt_dir("gan"),
                          checkpoint_minutes=self.checkpoint_minutes, max_minutes=self.max_minutes,
                          progress=self.progress, desc="GAN epochs",
                          # keyed on the GAN's settings only (see GAN_SETTINGS)
                          key=run_key(train, train[:0], {k: getattr(self, k) for k in GAN_SETTINGS}))
        Gn, Dn = wrap_ddp(G, device), wrap_ddp(D, device)
        opt_g, opt_d = cfg.make_optimizer(G.parameters(), self.lr_g), cfg.make_optimizer(D.parameters(), self.lr_d)
        bce = torch.nn.BCEWithLogitsLoss(reduction="sum")

        def step(x, gen, dist):
            z = torch.randn(len(x), self.z_dim, generator=gen).to(device)
            x, z, scale = dist.local(_signed(x)), dist.local(z), dist.world / len(x)
            fake = Gn(z)
            real_logit, fake_logit = Dn(x), Dn(fake.detach())
            d_loss = bce(real_logit, torch.ones_like(real_logit)) + bce(fake_logit, torch.zeros_like(fake_logit))
            opt_d.zero_grad()
            (d_loss * scale).backward()
            opt_d.step()
            g_logit = Dn(fake)
            g_loss = bce(g_logit, torch.ones_like(g_logit))
            opt_g.zero_grad()
            (g_loss * scale).backward()
            opt_g.step()
            return {"d_loss": d_loss.item(), "g_loss": g_loss.item(),
                    "d_real": torch.sigmoid(real_logit).sum().item(), "d_fake": torch.sigmoid(fake_logit).sum().item()}

        fixed_z = torch.randn(64, self.z_dim, generator=torch.Generator().manual_seed(self.seed)).to(device)
        every = max(1, self.epochs // 20)

        def sample_grid(epoch):
            if (epoch + 1) % every == 0 or epoch == self.epochs - 1:
                self._save_grid(G, fixed_z, f"samples_epoch{epoch + 1:04d}.png")

        result = fit_epochs({"G": Gn, "D": Dn}, {"opt_g": opt_g, "opt_d": opt_d}, step, train, cfg,
                            on_epoch=sample_grid)
        self.generator_, self.discriminator_ = G.eval().requires_grad_(False), D.eval().requires_grad_(False)
        self.record(result)
        self._save_curves()

    def _save_grid(self, G: Generator, z: torch.Tensor, name: str) -> None:
        if not self.checkpoint_dir:
            return
        from PIL import Image
        was_training = G.training
        with torch.no_grad():
            imgs = ((G.eval()(z) + 1) * 127.5).clamp(0, 255).byte().cpu().numpy()[:, 0]
        G.train(was_training)
        side = int(np.ceil(np.sqrt(len(imgs))))
        s = self.image_size
        grid = np.zeros((side * s, side * s), np.uint8)
        for i, im in enumerate(imgs):
            grid[(i // side) * s:(i // side + 1) * s, (i % side) * s:(i % side + 1) * s] = im
        path = Path(self.checkpoint_dir) / "samples" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)

    def _save_curves(self) -> None:
        if not self.checkpoint_dir:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in ("d_loss", "g_loss", "encoder_loss"):
            if self.history_.get(key):
                ax.plot(np.arange(1, len(self.history_[key]) + 1), self.history_[key], label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(Path(self.checkpoint_dir) / "losses.png", dpi=100)
        plt.close(fig)

    # ---------------------------------------------------------------------------------------- shared
    def _device(self) -> torch.device:
        return next(self.generator_.parameters()).device

    def features(self, images: np.ndarray) -> np.ndarray:
        """The discriminator's intermediate features of each image (for t-SNE maps)."""
        return map_batches(lambda x: {"f": self.discriminator_.features(_signed(x))}, images, self.batch_size, 1,
                           self._device())["f"]

    def anomaly_map(self, images: np.ndarray) -> np.ndarray:
        """Per-pixel |x - G(z)| in grey levels of [0, 1]."""
        return np.abs(np.asarray(images, np.float32) / 255.0 - self.reconstruct(images))

    def weights(self) -> dict[str, torch.Tensor]:
        t = {f"G.{k}": v for k, v in self.generator_.state_dict().items()}
        t.update({f"D.{k}": v for k, v in self.discriminator_.state_dict().items()})
        return t

    def state(self) -> dict:
        return {**super().state(), "architecture": self.architecture_name}

    def restore(self, tensors: dict, state: dict) -> None:
        if state.get("architecture") != self.architecture_name:
            raise ValueError(f"the bundle says its network is {state.get('architecture')!r} but its settings "
                             f"build {self.architecture_name!r}")
        part = lambda p: {k[2:]: v for k, v in tensors.items() if k.startswith(p)}  # noqa: E731
        self.generator_ = load_module(lambda: Generator(self.image_size, self.z_dim, self.width), part("G."),
                                      self.device).requires_grad_(False)
        self.discriminator_ = load_module(lambda: Discriminator(self.image_size, self.width), part("D."),
                                          self.device).requires_grad_(False)


@dataclass(repr=False, eq=False)
class AnoGANDetector(_GANDetector):
    """AnoGAN: each query image is mapped to the latent space by gradient descent on z (whole batches at once).

    Parameters
    ----------
    lam : float
        Weight λ of the discrimination (feature-matching) loss in A(x) = (1-λ)·R(x) + λ·D(x).
    map_iters : int
        Gradient steps of the latent mapping per image.
    map_lr : float
        Adam learning rate of the latent mapping.
    """

    kind: ClassVar[str] = "anogan"

    lam: float = 0.1
    map_iters: int = 500
    map_lr: float = 0.01

    def fit(self, X, y=None, val=None) -> "AnoGANDetector":
        try:
            return super().fit(X, y, val)
        finally:
            self._cache = None  # the held-out images' mapping is of no use after fit: free it

    def fit_arrays(self, train: np.ndarray, val: np.ndarray) -> None:
        self.train_gan(train)

    def map_latent(self, images: np.ndarray, batch_size: int | None = None, iters: int | None = None) -> dict:
        """Find z with G(z) closest to each image: Adam on the loss (1-λ)·Σ|x-G(z)| + λ·Σ|f(x)-f(G(z))|.

        A whole batch is optimised at once; each image's loss depends only on its own z (G and D are in eval
        mode) so the result equals mapping one image at a time. Start points come from ``seed`` per image
        index. An image whose loss turns NaN or inf is frozen and gets NaN scores instead of stopping the batch.
        Returns numpy arrays: z, recon (N, H, W) in [0, 1], residual, discrimination, score.
        """
        G, D, device = self.generator_, self.discriminator_, self._device()
        iters = self.map_iters if iters is None else iters
        z_all = torch.randn(len(images), self.z_dim, generator=torch.Generator().manual_seed(self.seed))
        parts: dict[str, list] = {}
        for idx in batches(len(images), batch_size or self.batch_size):
            x = _signed(to_tensor(np.asarray(images[idx]), 1, device))
            with torch.no_grad():
                fx = D.features(x)
            z = z_all[idx].clone().to(device).requires_grad_(True)
            opt = torch.optim.Adam([z], lr=self.map_lr)
            bad = torch.zeros(len(idx), dtype=torch.bool, device=device)
            for _ in progress_bar(range(iters), self.progress, desc=f"mapping {len(idx)} images", leave=False):
                loss = self._mapping_loss(x, fx, G(z))[2]
                bad |= ~torch.isfinite(loss)
                if bad.all():
                    break
                opt.zero_grad()
                loss.masked_fill(bad, 0.0).sum().backward()
                z.grad[bad] = 0.0
                opt.step()
            with torch.no_grad():
                recon = G(z)
                res, disc, score = self._mapping_loss(x, fx, recon)
            out = {"z": z.detach(), "recon": (recon[:, 0] + 1) / 2, "residual": res, "discrimination": disc,
                   "score": score}
            for k, v in out.items():
                v = v.detach().float().cpu().numpy()
                parts.setdefault(k, []).append(np.where(bad.cpu().numpy().reshape(-1, *[1] * (v.ndim - 1)),
                                                        np.nan, v) if k != "z" else v)
        return {k: np.concatenate(v) for k, v in parts.items()}

    def _mapping_loss(self, x, fx, gz):
        """Per-image residual Σ|x - G(z)| (grey levels in [0, 1]), feature loss Σ|f(x) - f(G(z))|, and A(x)."""
        residual = (x - gz).abs().flatten(1).sum(1) / 2
        discrimination = (fx - self.discriminator_.features(gz)).abs().sum(1)
        return residual, discrimination, (1 - self.lam) * residual + self.lam * discrimination

    def _mapped(self, images: np.ndarray) -> dict:
        """``map_latent`` with a one-entry cache, so score + anomaly_map on the same images map once."""
        images = np.asarray(images)
        key = (hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest(), images.shape, self.map_iters,
               self.map_lr, self.lam, self.seed)
        cache = getattr(self, "_cache", None)
        if cache is None or cache[0] != key:
            self._cache = cache = (key, self.map_latent(images))
        return cache[1]

    def score_components(self, images: np.ndarray) -> dict[str, np.ndarray]:
        m = self._mapped(images)
        return {k: m[k].astype(np.float64) for k in ("residual", "discrimination", "score")}

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """G(z) for the mapped z of each image, grey levels in [0, 1]."""
        return self._mapped(images)["recon"]


@dataclass(repr=False, eq=False)
class FAnoGANDetector(_GANDetector):
    """f-AnoGAN: an izi_f encoder trained with G and D frozen maps an image to z in one forward pass.

    Given the ``checkpoint_dir`` of an AnoGAN trained on the same images with the same GAN settings, it
    reuses that GAN (as the paper's two-stage training does) and trains only the encoder.

    Parameters
    ----------
    kappa : float
        Weight κ of the feature residual in the izi_f loss and score.
    encoder_epochs : int
        Epochs of the encoder (None: as many as the GAN's).
    lr_e : float
        Encoder learning rate.
    """

    kind: ClassVar[str] = "fanogan"

    kappa: float = 1.0
    encoder_epochs: int | None = None
    lr_e: float = 1e-4

    @property
    def architecture_name(self) -> str:
        return super().architecture_name + " + izi_f encoder"

    def fit_arrays(self, train: np.ndarray, val: np.ndarray) -> None:
        self.train_gan(train)
        self.train_encoder(train)

    def train_encoder(self, train: np.ndarray) -> None:
        """izi_f: minimise MSE(x, G(E(x))) + kappa * MSE(f(x), f(G(E(x)))) with G and D frozen."""
        device = self._device()
        torch.manual_seed(self.seed + 1)
        E = Encoder(self.image_size, self.z_dim, self.width).to(device)
        En = wrap_ddp(E, device)
        epochs = self.epochs if self.encoder_epochs is None else self.encoder_epochs
        cfg = self.train_config(train, train[:0], "encoder epochs", epochs=epochs, lr=self.lr_e, optimizer="adam",
                                betas=(0.5, 0.999), seed=self.seed + 1, checkpoint_dir=self._ckpt_dir("encoder"))
        opt = cfg.make_optimizer(E.parameters())
        step = loss_step(En, lambda m, x, target: self._izif(_signed(x), m)["score"], opt)
        result = fit_epochs({"E": En}, {"opt": opt}, step, train, cfg)
        self.encoder_ = E.eval().requires_grad_(False)
        self.history_ = {**getattr(self, "history_", {}), "encoder_loss": result.history.get("train_loss", [])}
        self._save_curves()

    def _izif(self, x: torch.Tensor, E: Encoder) -> dict[str, torch.Tensor]:
        """Per-image f-AnoGAN terms: mean squared pixel residual (grey levels in [0, 1]) and feature residual."""
        gz = self.generator_(E(x))
        residual, discrimination, score = izif_terms(x, gz, self.discriminator_, self.kappa)
        return {"residual": residual, "discrimination": discrimination, "score": score,
                "recon": (gz[:, 0] + 1) / 2}

    def _forward(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return map_batches(lambda x: self._izif(_signed(x), self.encoder_), images, self.batch_size, 1,
                           self._device())

    def score_components(self, images: np.ndarray) -> dict[str, np.ndarray]:
        out = self._forward(images)
        return {k: out[k].astype(np.float64) for k in ("residual", "discrimination", "score")}

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        return self._forward(images)["recon"]

    def encode(self, images: np.ndarray) -> np.ndarray:
        return map_batches(lambda x: {"z": self.encoder_(_signed(x))}, images, self.batch_size, 1,
                           self._device())["z"]

    def weights(self) -> dict[str, torch.Tensor]:
        t = super().weights()
        t.update({f"E.{k}": v for k, v in self.encoder_.state_dict().items()})
        return t

    def restore(self, tensors: dict, state: dict) -> None:
        super().restore(tensors, state)
        self.encoder_ = load_module(lambda: Encoder(self.image_size, self.z_dim, self.width),
                                    {k[2:]: v for k, v in tensors.items() if k.startswith("E.")},
                                    self.device).requires_grad_(False)
