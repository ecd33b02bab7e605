"""Per-timestep loss weights for `loss_weighting` (training only; the validation loss stays plain MSE).

- none: plain MSE on the model's target (A1111).
- velocity: an epsilon model's loss times 1/alpha_bar(t), divided by its mean over t. |v - v_hat|^2 equals
  |eps - eps_hat|^2 / alpha_bar(t), so this is the v-prediction loss; no effect on v-prediction models.
- min_snr: Min-SNR-gamma (Hang et al., ICCV 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"),
  SNR(t) = alpha_bar / (1 - alpha_bar). On the epsilon loss the weight is min(SNR, gamma) / SNR; on the v loss, which
  already carries a factor SNR + 1 relative to the epsilon loss, it is min(SNR, gamma) / (SNR + 1). Both equal
  min(SNR, gamma) on the x0 loss, which is the paper's definition (diffusers' train_text_to_image does the same).
"""

from __future__ import annotations


def timestep_weights(alphas_cumprod, timesteps, mode: str, prediction_type: str, gamma: float = 5.0):
    """The weight of each sample's MSE at `timesteps`, or None where the loss stays unweighted."""
    import torch

    ac = alphas_cumprod.to(dtype=torch.float32)
    if mode == "velocity":
        if prediction_type == "v_prediction":
            return None
        inv = 1.0 / ac
        return inv[timesteps] / inv.mean()
    if mode == "min_snr":
        snr = ac[timesteps] / (1.0 - ac[timesteps])
        clipped = torch.clamp(snr, max=float(gamma))
        return clipped / (snr + 1.0) if prediction_type == "v_prediction" else clipped / snr
    return None
