"""Has an SAE converged? Diagnostics recorded during training and the verdict from fixed thresholds.

Per SAE, on a fixed held-out sample and a train sample of the same size (FVU is mean-centred):
  fvu_heldout_75, fvu_heldout_end   held-out FVU at 75% of the steps and at the end
  fvu_gain_last_quarter             (fvu_heldout_75 - fvu_heldout_end) / fvu_heldout_75
  dec_stability                     median over latents of cos(decoder row at 75%, at the end)
  init_cos_median, init_frac_above  decoder rows' cosine to their own random init: median, fraction > 0.7
  fvu_train_end, fvu_gap            train FVU at the end; (held-out - train) / train
  l0_rel_error                      |held-out L0 - k| / k, for architectures whose k fixes L0 (set by evaluate)
``converged``: every available criterion of THRESHOLDS holds (a missing diagnostic fails it). The last
one is not in the usual list: a run of a few steps under a decaying learning rate also stops improving
and stops moving, so only its distance from the init tells it from a converged one (tests/test_convergence.py).
"""
import io
import math
from pathlib import Path

import numpy as np
import torch

from .io import write_bytes_atomic

THRESHOLDS = dict(fvu_gain_last_quarter=0.02,  # held-out FVU improves by less than 2% over the last quarter
                  dec_stability=0.98,          # decoder rows barely move over the last quarter
                  fvu_gap=0.05,                # held-out FVU within 5% of train FVU (no overfitting)
                  l0_rel_error=0.05,           # L0 within 5% of k where k fixes L0
                  init_frac_above=0.5)         # most decoder rows left their init (cosine to it <= 0.7)
INIT_THRESHOLD = 0.7


def _fvu(sae, x) -> float:
    from .metrics import reconstruction_metrics
    return float(reconstruction_metrics(sae, x)["fvu"])


def _rows(W) -> torch.Tensor:
    return torch.nn.functional.normalize(W.detach().float(), dim=-1)


class Monitor:
    """``train_sweep`` callback: at 75% of the steps, every SAE's decoder and held-out FVU, saved to ``path``
    (so a run resumed after that point still has them)."""

    def __init__(self, n_steps: int, heldout: torch.Tensor, path=None, train_sample: torch.Tensor | None = None):
        self.at, self.heldout, self.path = math.ceil(0.75 * n_steps), heldout, Path(path) if path else None
        self.train_sample = train_sample
        self.snap = torch.load(self.path, weights_only=True) if self.path and self.path.exists() else None

    def __call__(self, step, tokens, saes):
        if step != self.at:
            return
        self.snap = {n: {"W_dec": s.W_dec.detach().clone(), "fvu": torch.tensor(_fvu(finalized(s, self.train_sample), self.heldout))}
                     for n, s in saes.items()}
        if self.path:
            buf = io.BytesIO()
            torch.save(self.snap, buf)
            write_bytes_atomic(self.path, buf.getvalue())

    def diagnostics(self, saes: dict, train_sample: torch.Tensor) -> dict[str, dict]:
        from .analysis.matching import cosine_to_init
        out = {}
        for n, s in saes.items():
            end, train = _fvu(s, self.heldout), _fvu(s, train_sample)
            init = cosine_to_init(s)
            d = dict(fvu_heldout_end=end, fvu_train_end=train, fvu_gap=(end - train) / train,
                     init_cos_median=float(np.median(init)), init_frac_above=float((init > INIT_THRESHOLD).mean()))
            if self.snap and n in self.snap:
                f75 = float(self.snap[n]["fvu"])
                d.update(fvu_heldout_75=f75, fvu_gain_last_quarter=(f75 - end) / f75,
                         dec_stability=float((_rows(self.snap[n]["W_dec"]) * _rows(s.W_dec)).sum(-1).median()))
            out[n] = d
        return out


def finalize(sae, train_sample) -> None:
    """What stage 02 does to a trained SAE before using it: calibrate an inference threshold if it has one."""
    if train_sample is not None and hasattr(sae, "calibrate_threshold"):
        sae.calibrate_threshold(train_sample)


def finalized(sae, train_sample):
    """``sae`` as it would be after ``finalize`` (a copy when that changes it), in eval mode."""
    if train_sample is None or not hasattr(sae, "calibrate_threshold"):
        return sae
    import copy
    out = copy.deepcopy(sae).eval()
    finalize(out, train_sample)
    return out


def converged(d: dict) -> bool:
    """The verdict from ``THRESHOLDS``; ``l0_rel_error`` counts only when present (k fixes L0)."""
    def val(k):
        v = d.get(k)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    need = ("fvu_gain_last_quarter", "dec_stability", "fvu_gap", "init_frac_above")
    if any(val(k) is None for k in need):
        return False
    ok = val("fvu_gain_last_quarter") < THRESHOLDS["fvu_gain_last_quarter"] and \
        val("dec_stability") > THRESHOLDS["dec_stability"] and abs(val("fvu_gap")) < THRESHOLDS["fvu_gap"] and \
        val("init_frac_above") < THRESHOLDS["init_frac_above"]
    return bool(ok and (val("l0_rel_error") is None or val("l0_rel_error") < THRESHOLDS["l0_rel_error"]))
