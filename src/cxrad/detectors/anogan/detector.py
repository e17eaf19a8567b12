"""AnoGAN (latent mapping by back-propagation) and f-AnoGAN (a trained encoder) on one DCGAN.

Both train a DCGAN on normal images only (``train_gan``), then score a query image by how well the
generator can reproduce it: a pixel residual plus a residual on the discriminator's features.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from cxrad.detectors.anogan.graph import AnoGANGraph, FAnoGANGraph, izif_terms
from cxrad.detectors.anogan.model import Discriminator, Encoder, Generator, check_size
from cxrad.detectors.base import TrainedDetector
from cxrad.training import TrainConfig, fit_epochs, loss_step, resolve_device, run_identity, run_key, wrap_ddp

OPTIMIZERS = ("adam", "rmsprop")
#: the settings that define the GAN: an f-AnoGAN given an AnoGAN's checkpoint_dir with these equal reuses its GAN
GAN_SETTINGS = ("image_size", "resize", "seed", "batch_size", "z_dim", "width", "optimizer", "lr_d", "lr_g")


def _beside(path: str | None, part: str) -> str | None:
    """``losses.csv`` -> ``losses-encoder.csv``: the log of a second training stage, beside the first's."""
    return None if path is None else str(Path(path).with_name(f"{Path(path).stem}-{part}{Path(path).suffix}"))


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
    fitted_modules: ClassVar[dict] = {"generator_": "G.", "discriminator_": "D."}
    choices: ClassVar[dict] = {**TrainedDetector.choices, "optimizer": OPTIMIZERS}
    bounds: ClassVar[dict] = {**TrainedDetector.bounds, "image_size": (32, 1024), "z_dim": (1, 4096),
                              "width": (1, 1024), "lr_d": (0.0, 10.0), "lr_g": (0.0, 10.0)}

    image_size: int = 64
    epochs: int = 100
    z_dim: int = 100
    width: int = 64
    optimizer: str = "adam"
    lr_d: float = 2e-4
    lr_g: float = 2e-4

    def check_settings(self):
        super().check_settings()
        check_size(self.image_size)
        if self.keep != "last" or self.patience is not None:
            raise ValueError(f"settings keep and patience go by a validation loss, which the {self.kind} GAN does "
                             "not have: leave them at 'last' and None")
        return self

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
                          progress=self.progress, desc="GAN epochs", log_csv=self.loss_log,
                          # keyed on the GAN's settings only (see GAN_SETTINGS)
                          key=run_key(train, train[:0], {k: getattr(self, k) for k in GAN_SETTINGS}),
                          identity=run_identity(train, train[:0], {k: getattr(self, k) for k in GAN_SETTINGS}))
        Gn, Dn = wrap_ddp(G, device), wrap_ddp(D, device)
        opt_g, opt_d = cfg.make_optimizer(G.parameters(), self.lr_g), cfg.make_optimizer(D.parameters(), self.lr_d)
        bce = torch.nn.BCEWithLogitsLoss(reduction="sum")

        def step(x, gen, dist):
            z = torch.randn(len(x), self.z_dim, generator=gen).to(device)
            x, z, scale = dist.local(x * 2 - 1), dist.local(z), dist.world / len(x)
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

    def networks(self) -> dict:
        return {"generator_": lambda: Generator(self.image_size, self.z_dim, self.width),
                "discriminator_": lambda: Discriminator(self.image_size, self.width),
                "encoder_": lambda: Encoder(self.image_size, self.z_dim, self.width)}

    def state(self) -> dict:
        return {**super().state(), "architecture": self.architecture_name}

    def restore(self, tensors: dict, state: dict) -> None:
        if state.get("architecture") != self.architecture_name:
            raise ValueError(f"the bundle says its network is {state.get('architecture')!r} but its settings "
                             f"build {self.architecture_name!r}")
        super().restore(tensors, state)
        for attr in self.fitted_modules:  # scoring only: the latent mapping needs gradients for z, not weights
            getattr(self, attr).requires_grad_(False)


@dataclass(repr=False, eq=False)
class AnoGANDetector(_GANDetector):
    """AnoGAN: each query image is mapped to the latent space by gradient descent on z (see ``AnoGANGraph``).

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
    tiny: ClassVar[dict] = {"image_size": 32, "epochs": 1, "width": 8, "z_dim": 8, "map_iters": 3}
    bounds: ClassVar[dict] = {**_GANDetector.bounds, "lam": (0.0, 1.0), "map_iters": (0, 10**5),
                              "map_lr": (0.0, 10.0)}

    lam: float = 0.1
    map_iters: int = 500
    map_lr: float = 0.01

    def fit_arrays(self, train: np.ndarray, val: np.ndarray, sample_weight=None) -> None:
        self.train_gan(train)

    def scoring_graph(self) -> AnoGANGraph:
        return AnoGANGraph(self.generator_, self.discriminator_, self.lam, self.map_iters, self.map_lr, self.seed,
                           self.z_dim)


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
    fitted_modules: ClassVar[dict] = {**_GANDetector.fitted_modules, "encoder_": "E."}
    tiny: ClassVar[dict] = {"image_size": 32, "epochs": 1, "width": 8, "z_dim": 8}

    kappa: float = 1.0
    encoder_epochs: int | None = None
    lr_e: float = 1e-4

    @property
    def architecture_name(self) -> str:
        return super().architecture_name + " + izi_f encoder"

    def fit_arrays(self, train: np.ndarray, val: np.ndarray, sample_weight=None) -> None:
        self.train_gan(train)
        self.train_encoder(train)

    def train_encoder(self, train: np.ndarray) -> None:
        """izi_f: minimise MSE(x, G(E(x))) + kappa * MSE(f(x), f(G(E(x)))) with G and D frozen."""
        device = next(self.generator_.parameters()).device
        torch.manual_seed(self.seed + 1)
        E = Encoder(self.image_size, self.z_dim, self.width).to(device)
        En = wrap_ddp(E, device)
        epochs = self.epochs if self.encoder_epochs is None else self.encoder_epochs
        cfg = self.train_config(train, train[:0], "encoder epochs", epochs=epochs, lr=self.lr_e, optimizer="adam",
                                betas=(0.5, 0.999), seed=self.seed + 1, checkpoint_dir=self._ckpt_dir("encoder"),
                                log_csv=_beside(self.loss_log, "encoder"))
        opt = cfg.make_optimizer(E.parameters())
        step = loss_step(En, lambda m, x, target: izif_terms(x * 2 - 1, self.generator_(m(x * 2 - 1)),
                                                              self.discriminator_, self.kappa)[2], opt)
        result = fit_epochs({"E": En}, {"opt": opt}, step, train, cfg)
        self.encoder_ = E.eval().requires_grad_(False)
        self.history_ = {**getattr(self, "history_", {}), "encoder_loss": result.history.get("train_loss", [])}
        self._save_curves()

    def scoring_graph(self) -> FAnoGANGraph:
        return FAnoGANGraph(self.encoder_, self.generator_, self.discriminator_, self.kappa)
