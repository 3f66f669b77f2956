"""Has an SAE converged? Diagnostics recorded during training and the verdict from fixed thresholds.

Per SAE, on a fixed held-out sample and a train sample of the same size (FVU is mean-centred):
  fvu_heldout_75, fvu_heldout_end   held-out FVU at 75% of the steps and at the end
  fvu_gain_last_quarter             (fvu_heldout_75 - fvu_heldout_end) / fvu_heldout_75
  dec_stability                     median over live latents of cos(decoder row at 75%, at the end)
  init_cos_median, init_frac_above  live decoder rows' cosine to their own random init: median, fraction > 0.7
Live latents fire on the held-out sample. A dead latent's row gets no gradient (without AuxK), so it keeps
its init and never moves: counted, it would fail a converged SAE that lost latents for leaving rows at init
and pass it for stability. Dead latents are reported by ``dead_fraction`` instead.
  fvu_train_end, fvu_gap            train FVU at the end; (held-out - train) / train
  fvu_gap_first_epoch               the same gap after one pass over the training tokens (each seen once)
  fvu_gap_growth                    fvu_gap - fvu_gap_first_epoch: what repeated epochs added (overfitting)
  l0_rel_error                      |held-out L0 - k| / k, for architectures whose k fixes L0 (set by evaluate)
The overfitting check is the growth of the gap, not the gap: held-out contexts come from other documents,
and on a heterogeneous corpus (the Python docs) they are harder than the training ones by ~14% FVU after
a single pass, before any token was seen twice (docs/LOG.md, "Train/held-out gap"). No amount of
training removes that part; memorising the training tokens adds to it.
``converged``: every available criterion of THRESHOLDS holds (a missing diagnostic fails it). The last
one is not in the usual list: a run of a few steps under a decaying learning rate also stops improving
and stops moving, so only its distance from the init tells it from a converged one (tests/test_convergence.py).
"""
import copy
import io
import math
from pathlib import Path

import numpy as np
import torch

from .io import write_bytes_atomic
from .metrics import reconstruction_metrics
from .tensors import normalize_rows

THRESHOLDS = dict(fvu_gain_last_quarter=0.02,  # held-out FVU improves by less than 2% over the last quarter
                  dec_stability=0.98,          # decoder rows barely move over the last quarter
                  fvu_gap_growth=0.05,         # the train/held-out gap grew < 5 points since the first epoch
                  l0_rel_error=0.05,           # L0 within 5% of k where k fixes L0
                  init_frac_above=0.5)         # most decoder rows left their init (cosine to it <= 0.7)
INIT_THRESHOLD = 0.7


def _fvu(sae, x, fired: bool = False):
    """Held-out FVU (and, with ``fired``, the mask of latents that fire on ``x``)."""
    m = reconstruction_metrics(sae, x, fired=fired)
    return (float(m["fvu"]), m["fired"]) if fired else float(m["fvu"])


def _rows(W) -> torch.Tensor:
    return torch.nn.functional.normalize(W.detach().float(), dim=-1)


class Monitor:
    """``train_sweep`` callback: every SAE's train and held-out FVU after its first epoch (``epoch_steps``, or
    the end if sooner; needs ``train_sample``), and its decoder and held-out FVU at 75% of the steps; saved to
    ``path`` so that a run resumed after either point still has them."""

    def __init__(self, n_steps: int, heldout: torch.Tensor, path=None, train_sample: torch.Tensor | None = None,
                 epoch_steps: int | None = None):
        self.at, self.heldout, self.path = math.ceil(0.75 * n_steps), heldout, Path(path) if path else None
        self.epoch_at = min(epoch_steps, n_steps) if epoch_steps and train_sample is not None else None
        self.train_sample = train_sample
        saved = torch.load(self.path, weights_only=True) if self.path and self.path.exists() else {}
        self.snap, self.first = saved.get("q3"), saved.get("epoch", {})

    def __call__(self, step, tokens, saes):
        if step == self.epoch_at:
            for n, s in saes.items():
                s = finalized(s, self.train_sample)
                self.first[n] = torch.tensor([_fvu(s, self.heldout), _fvu(s, self.train_sample)])
        if step == self.at:
            self.snap = {n: {"W_dec": s.W_dec.detach().clone(), "fvu": torch.tensor(_fvu(finalized(s, self.train_sample), self.heldout))}
                         for n, s in saes.items()}
        if self.path and step in (self.at, self.epoch_at):
            buf = io.BytesIO()
            torch.save({"q3": self.snap, "epoch": self.first}, buf)
            write_bytes_atomic(self.path, buf.getvalue())

    def diagnostics(self, saes: dict, train_sample: torch.Tensor) -> dict[str, dict]:
        out = {}
        for n, s in saes.items():
            (end, live), train = _fvu(s, self.heldout, fired=True), _fvu(s, train_sample)
            live = live.cpu()
            init = cosine_to_init(s)[live.numpy()]
            d = dict(fvu_heldout_end=end, fvu_train_end=train, fvu_gap=(end - train) / train,
                     init_cos_median=float(np.median(init)) if len(init) else math.nan,
                     init_frac_above=float((init > INIT_THRESHOLD).mean()) if len(init) else math.nan)
            if n in self.first:
                held, train0 = (float(v) for v in self.first[n])
                d["fvu_gap_first_epoch"] = (held - train0) / train0
                d["fvu_gap_growth"] = d["fvu_gap"] - d["fvu_gap_first_epoch"]
            if self.snap and n in self.snap:
                f75 = float(self.snap[n]["fvu"])
                d.update(fvu_heldout_75=f75, fvu_gain_last_quarter=(f75 - end) / f75,
                         dec_stability=_median((_rows(self.snap[n]["W_dec"]) * _rows(s.W_dec)).sum(-1).cpu()[live]))
            out[n] = d
        return out


def _median(x: torch.Tensor) -> float:
    """torch's median (the lower middle value), NaN for no values (an SAE with no live latent)."""
    return float(x.median()) if len(x) else math.nan


def finalize(sae, train_sample) -> None:
    """What stage 02 does to a trained SAE before using it: calibrate an inference threshold if it has one."""
    if train_sample is not None and hasattr(sae, "calibrate_threshold"):
        sae.calibrate_threshold(train_sample)


def finalized(sae, train_sample):
    """``sae`` as it would be after ``finalize`` (a copy when that changes it), in eval mode."""
    if train_sample is None or not hasattr(sae, "calibrate_threshold"):
        return sae
    out = copy.deepcopy(sae).eval()
    finalize(out, train_sample)
    return out


def converged(d: dict) -> bool:
    """The verdict from ``THRESHOLDS``; ``l0_rel_error`` counts only when present (k fixes L0)."""
    def val(k):
        v = d.get(k)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    need = ("fvu_gain_last_quarter", "dec_stability", "fvu_gap_growth", "init_frac_above")
    if any(val(k) is None for k in need):
        return False
    ok = val("fvu_gain_last_quarter") < THRESHOLDS["fvu_gain_last_quarter"] and \
        val("dec_stability") > THRESHOLDS["dec_stability"] and val("fvu_gap_growth") < THRESHOLDS["fvu_gap_growth"] and \
        val("init_frac_above") < THRESHOLDS["init_frac_above"]
    return bool(ok and (val("l0_rel_error") is None or val("l0_rel_error") < THRESHOLDS["l0_rel_error"]))


def cosine_to_init(sae) -> np.ndarray:
    """Cosine of each decoder row to the same row of a freshly initialised SAE of the same config
    (its config holds the init seed, hence the same random decoder): how far training moved each feature."""
    return (normalize_rows(sae.W_dec) * normalize_rows(type(sae)(sae.cfg).W_dec)).sum(1).astype(np.float64)
