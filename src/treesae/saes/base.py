"""Base class and config shared by every SAE architecture.

Conventions (shared with sae-lens): ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
``b_dec [d_in]``; decoder *rows* are the dictionary directions. ``b_dec`` is also the pre-encoder bias:
encoders read ``x - b_dec`` unless the config says otherwise (ReLU-L1).

Training loss scale. Every architecture's reconstruction term is the batch nMSE
``sum_b ||x_b - x_hat_b||^2 / sum_b ||x_b||^2`` (not mean-centred), so learning rates transfer across
layers and models whatever the activation norm.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..tensors import fired  # noqa: F401  (re-exported by treesae.saes)
from .sparse import Codes, Kernels, aux_select

# AuxK runs as dense GEMMs on the dead latents' columns while n_dead <= AUX_DENSE_RATIO * k_aux, and
# with the sparse kernels beyond (on this CPU: dense ~0.3 ms per dead latent, sparse ~3 ms per k_aux
# at B=4096, d_in=576). Both give the same values and gradients; tests set it to 0 to check that.
AUX_DENSE_RATIO = 8.0


@dataclass(kw_only=True)
class SAEConfig:
    """Fields every architecture shares.

    d_in: input (residual stream) width.
    seed: weights are initialised from ``torch.Generator().manual_seed(seed)``, nothing else.
    sparse: use the sparse kernels (``treesae.saes.sparse``); False runs the dense reference maths.
    tied_init: initialise the encoder as the decoder's transpose (OpenAI).
    normalize_decoder: keep decoder rows at unit norm and remove the gradient component parallel
        to each row before the optimizer step (OpenAI).
    geometric_median_init: ``init_from_sample`` puts ``b_dec`` at the sample's geometric median
        (Weiszfeld); otherwise ``b_dec`` stays at zero.
    decoder_init_norm: norm of the decoder rows at initialisation.
    """

    architecture: ClassVar[str] = ""

    d_in: int
    seed: int = 0
    sparse: bool = True
    tied_init: bool = True
    normalize_decoder: bool = True
    geometric_median_init: bool = True
    decoder_init_norm: float = 1.0

    def __post_init__(self):
        self._check_int("d_in", self.d_in)
        self._check_int("seed", self.seed, minimum=0)
        self._check(self.decoder_init_norm > 0,
                    f"decoder_init_norm must be > 0, got {self.decoder_init_norm}")

    def _check(self, ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(f"{type(self).__name__}: {msg}")

    def _check_int(self, name: str, value: Any, minimum: int = 1) -> None:
        self._check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
                    f"{name} must be an integer >= {minimum}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def target_fields(cls, d_sae: int, k: int, **extra) -> dict[str, Any]:
        """Config fields (less ``d_in``, ``seed``) for a sweep's target: ``d_sae`` latents at L0 ``k``,
        with ``extra`` (``train.architectures.<name>`` in params.yaml) added last. Default: k per token."""
        return {"d_sae": d_sae, "k": k, **extra}


@dataclass(kw_only=True)
class AuxKConfig:
    """AuxK (OpenAI): the top ``k_aux`` dead latents (by pre-activation) reconstruct the residual.

    aux_k: enable it. k_aux: dead latents used per token; clamped to half the dictionary (per level
    for hierarchical SAEs) and to the number of dead latents. aux_coef: weight of the loss, whose
    value is ``||e_hat - e||^2 / ||e - mean(e)||^2`` over the batch, with ``e`` the detached
    reconstruction error (normalisation as in OpenAI's reference implementation).
    """

    aux_k: bool = True
    k_aux: int = 256
    aux_coef: float = 1 / 32

    def _check_aux(self) -> None:
        self._check_int("k_aux", self.k_aux)
        self._check(self.aux_coef >= 0, f"aux_coef must be >= 0, got {self.aux_coef}")


@dataclass(kw_only=True)
class FlatConfig(SAEConfig):
    """A single dictionary of ``d_sae`` latents."""

    d_sae: int

    def __post_init__(self):
        super().__post_init__()
        self._check_int("d_sae", self.d_sae)


def geometric_median(x: Tensor, max_iter: int = 200, tol: float = 1e-7, eps: float = 1e-8) -> Tensor:
    """Weiszfeld iterations for ``argmin_m sum_i ||x_i - m||`` in float64, started at the mean."""
    x = x.detach().reshape(-1, x.shape[-1]).double()
    m = x.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(eps)
        m_new = (w[:, None] * x).sum(0) / w.sum()
        done = (m_new - m).norm() <= tol * m.norm().clamp_min(1.0)
        m = m_new
        if done:
            break
    return m


class SquaredError(torch.autograd.Function):
    """``(x_hat - x).pow(2).sum()`` whose backward allocates one [B, d] tensor where autograd's sub and pow take
    three; the value and the gradient ``2 (x_hat - x) g`` are the same bits."""

    @staticmethod
    def forward(ctx, x_hat: Tensor, x: Tensor) -> Tensor:
        diff = x_hat - x
        ctx.save_for_backward(diff)
        return diff.pow(2).sum()

    @staticmethod
    def backward(ctx, g: Tensor):
        (diff,) = ctx.saved_tensors
        grad = diff.mul(2).mul_(g)
        return grad if ctx.needs_input_grad[0] else None, -grad if ctx.needs_input_grad[1] else None


def squared_error(x_hat: Tensor, x: Tensor) -> Tensor:
    """``sum ||x - x_hat||^2`` over the batch."""
    return SquaredError.apply(x_hat, x)


def reconstruction_errors(x_hats: list[Tensor], x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Per reconstruction: ``sum ||x - x_hat||^2`` and the batch nMSE, that over ``sum ||x||^2`` (computed once)."""
    x_sq = x.pow(2).sum().clamp_min(1e-12)
    errors = [squared_error(x_hat, x) for x_hat in x_hats]
    return errors, [e / x_sq for e in errors]


def nmse(x_hat: Tensor, x: Tensor) -> Tensor:
    """Batch nMSE: ``sum ||x - x_hat||^2 / sum ||x||^2`` (not mean-centred)."""
    return reconstruction_errors([x_hat], x)[1][0]


def aux_nmse(e_hat: Tensor, e: Tensor) -> Tensor:
    """AuxK loss value: ``sum ||e_hat - e||^2 / sum ||e - mean(e)||^2`` (OpenAI's normalised MSE)."""
    return ((e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)).nan_to_num(0.0)


def auxk_reconstruction(pre: Tensor, dead_mask: Tensor, k_aux: int, columns, value_at, W_dec: Tensor,
                        offset: int, kernels: Kernels, scale: Tensor | None = None) -> Tensor | None:
    """AuxK's ``e_hat`` [B, d_in] (no bias) from the top-``k_aux`` dead latents of one dictionary level.

    pre: [B, w] selection scores (pre-activations, times ``scale`` when given); dead_mask: bool [w];
    columns(cols) -> [B, len(cols)] and value_at(rows, cols) -> [n]: differentiable pre-activations; the
    level's latents are rows ``offset + j`` of ``W_dec``; scale: [w] per-latent selection weights (decoder
    norms) or None. None when no latent is dead.
    """
    dead = dead_mask.nonzero().squeeze(1)
    k = min(k_aux, dead.numel())
    if k == 0:
        return None
    if dead.numel() <= AUX_DENSE_RATIO * k:
        a = columns(dead)
        if k < dead.numel():
            sel = a.detach() if scale is None else a.detach() * scale[dead]
            a = a * torch.zeros_like(a, dtype=torch.bool).scatter_(1, sel.topk(k, dim=1, sorted=False).indices, True)
        return a.relu() @ W_dec[dead + offset]
    rows, cols, offsets = aux_select(pre.detach(), dead_mask, k)
    codes = Codes(value_at(rows, cols).relu(), rows, cols + offset, offsets, (pre.shape[0], W_dec.shape[0]))
    return kernels.decode(codes, W_dec)


def weights_digest(sae: nn.Module) -> bytes:
    """sha256 of every tensor of ``sae.state_dict()`` (names, dtypes, shapes, bytes): keys cached results."""
    h = hashlib.sha256()
    for name, t in sorted(sae.state_dict().items()):
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()


def unit_rows(shape: tuple[int, int], gen: torch.Generator, norm: float = 1.0) -> Tensor:
    """Random directions as rows with the given norm."""
    w = torch.randn(shape, generator=gen)
    return w / w.norm(dim=1, keepdim=True) * norm


class BaseSAE(nn.Module):
    """Interface every architecture implements (see docs/DESIGN.md).

    Subclasses define the parameters ``W_dec [d_sae, d_in]`` and ``b_dec [d_in]`` (the decoder is one
    linear map for every architecture here, hierarchical ones included) and implement ``encode`` and
    ``training_loss``.
    """

    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    W_dec: nn.Parameter
    b_dec: nn.Parameter

    training_only: ClassVar[tuple[str, ...]] = ()  # buffers that matter during training only (not exported)
    token_counts: ClassVar[tuple[str, ...]] = ()   # buffers counting over a batch's tokens (data-parallel ranks add theirs)

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        self.kernels = Kernels(cfg.sparse)

    @property
    def architecture(self) -> str:
        return self.cfg.architecture

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def levels(self) -> list[slice]:
        """Latent ranges per level (one for flat SAEs)."""
        return [slice(0, self.d_sae)]

    @property
    def parent_of(self) -> Tensor | None:
        """Parent latent of every latent (-1 at the root level); None except for the tree SAE."""
        return None

    def encode(self, x: Tensor) -> Tensor:
        """Dense codes z [B, d_sae]."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def training_loss(self, x: Tensor, dead_mask: Tensor | None = None, *, dense_z: bool = True
                      ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """(loss, logs, z) for one batch.

        dead_mask: bool [d_sae], latents the trainer considers dead (AuxK uses them); None = none.
        logs: detached scalar tensors (loss, mse, nmse, l0, aux, per-level entries ``level{i}/...``).
        z: detached codes [B, d_sae]; dense by default, a ``torch.sparse_coo_tensor`` when
        ``dense_z=False`` (saves a [B, d_sae] allocation per step; ``fired(z)`` handles both).
        """
        raise NotImplementedError

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Remove the component of each decoder row's gradient parallel to the row."""
        if self.cfg.normalize_decoder and self.W_dec.grad is not None:
            W, g = self.W_dec, self.W_dec.grad
            g -= (g * W).sum(1, keepdim=True) / W.pow(2).sum(1, keepdim=True).clamp_min(1e-12) * W

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Renormalise the decoder rows to unit norm."""
        if self.cfg.normalize_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def init_from_sample(self, x: Tensor) -> None:
        """Data-dependent initialisation: ``b_dec`` at the geometric median of ``x`` [n, d_in]."""
        if self.cfg.geometric_median_init:
            self.b_dec.copy_(geometric_median(x).to(self.b_dec))

    def sae_lens_spec(self, state: dict[str, Tensor]) -> tuple[type, type, dict[str, Any], dict[str, Tensor]]:
        """(sae-lens SAE class, its config class, extra config fields, state dict) of the equivalent
        sae-lens inference SAE; ``state`` is our state dict less ``training_only`` (``saes.export``)."""
        raise NotImplementedError(f"{type(self).__name__} declares no sae-lens export (sae_lens_spec)")

    # ---------------------------------------------------------------- helpers for subclasses
    def _prep(self, x: Tensor) -> Tensor:
        """Check that x is [B, d_in] and cast it to the weights' dtype."""
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"{type(self).__name__} expects inputs of shape [batch, d_in={self.d_in}], "
                             f"got {tuple(x.shape)}; flatten the token dimensions first")
        return x.to(self.W_dec.dtype)

    def _z_out(self, codes: Codes, dense_z: bool) -> Tensor:
        codes = codes._replace(vals=codes.vals.detach())
        return codes.dense() if dense_z else codes.to_sparse()

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.cfg.seed)

    def _init_flat_weights(self) -> None:
        """One level: unit-norm decoder rows, the encoder tied to their transpose (``tied_init``) or
        drawn independently, zero biases."""
        cfg, gen = self.cfg, self._generator()
        W_dec = unit_rows((cfg.d_sae, cfg.d_in), gen, cfg.decoder_init_norm)
        W_enc = W_dec if cfg.tied_init else unit_rows((cfg.d_sae, cfg.d_in), gen, cfg.decoder_init_norm)
        self.W_enc = nn.Parameter(W_enc.t().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))


def scalar_logs(**values: Tensor | float) -> dict[str, Tensor]:
    return {k: (v.detach() if isinstance(v, Tensor) else torch.tensor(float(v))) for k, v in values.items()}
