"""The arithmetic of PPO for language models, on padded (batch, reply tokens) tensors with a 0/1 mask: per-token
rewards with a KL penalty, generalised advantage estimation, whitening, the clipped policy and value losses, the
adaptive KL coefficient and running score moments. The formulas and defaults are those of TRL's former PPOTrainer
(which LLaMA-Factory's PPO used); TRL 1.x no longer ships it."""

import torch

GAMMA = 1.0  # discount: a reply is one episode
LAM = 0.95  # GAE lambda
CLIP_RANGE = 0.2  # policy ratio clip
CLIP_RANGE_VALUE = 0.2  # value prediction clip around the rollout's value
VF_COEF = 0.1  # value loss weight
INIT_KL_COEF = 0.2  # starting KL penalty coefficient
KL_HORIZON = 10000  # samples over which the adaptive coefficient moves by at most 20%


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(xs: list[torch.Tensor], masks: list[torch.Tensor], shift_mean: bool = True) -> list[torch.Tensor]:
    """Whiten several (batch, tokens) tensors together over their masked entries: (x - mean) / std with the unbiased
    variance; `shift_mean=False` keeps the mean (rewards keep their sign). Padded entries stay as they are."""
    values = torch.cat([x[m.bool()] for x, m in zip(xs, masks)])
    mean = values.mean()
    var = values.var(unbiased=values.numel() > 1) if values.numel() > 1 else torch.zeros_like(mean)
    scale = torch.rsqrt(var + 1e-8)
    out = []
    for x, m in zip(xs, masks):
        w = (x - mean) * scale + (0 if shift_mean else mean)
        out.append(torch.where(m.bool(), w, x))
    return out


def kl_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
               kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef x (log p - log p_ref) on every reply token, plus the score on the last one.

    Returns (rewards, kl): both (batch, tokens), zero on padding; `kl` is the per-token log-ratio.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(1)  # the last reply token of each row
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += scores
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = GAMMA,
        lam: float = LAM) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation backwards over the reply tokens (a padded step has value and reward 0).

    Returns (advantages, returns), returns = advantages + values.
    """
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages * mask, (advantages + values) * mask


def ppo_loss(logprobs, old_logprobs, values, old_values, advantages, returns, mask,
             clip_range: float = CLIP_RANGE, clip_range_value: float = CLIP_RANGE_VALUE,
             vf_coef: float = VF_COEF) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate policy loss plus vf_coef x clipped value loss, averaged over reply tokens.

    Returns (loss, stats) with stats policy_loss, value_loss, clip_fraction, approx_kl (floats).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    pg = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range))
    policy_loss = masked_mean(pg, mask)
    clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    value_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
    loss = policy_loss + vf_coef * value_loss
    with torch.no_grad():
        stats = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                 "clip_fraction": masked_mean(((ratio - 1).abs() > clip_range).float(), mask).item(),
                 "approx_kl": masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask).item()}
    return loss, stats


class AdaptiveKL:
    """The KL coefficient moves toward `target` (summed KL per reply): by at most 20% per `horizon` samples."""

    def __init__(self, target: float, value: float = INIT_KL_COEF, horizon: int = KL_HORIZON):
        self.target, self.value, self.horizon = target, value, horizon

    def update(self, kl: float, samples: int) -> float:
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * samples / self.horizon
        return self.value


class RunningMoments:
    """Running mean and standard deviation of the reward model's scores (for ppo_score_norm)."""

    def __init__(self):
        self.mean, self.var, self.std, self.count = 0.0, 1.0, 1.0, 1e-24

    def update(self, xs: torch.Tensor) -> None:
        xs = xs.double()
        n, mean, var = xs.numel(), xs.mean().item(), xs.var(unbiased=False).item()
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.var = (self.var * self.count + delta ** 2 * self.count * n / total + var * n) / total
        self.std = (self.var * total / max(total - 1, 1e-12)) ** 0.5
        self.count = total

    def normalize(self, xs: torch.Tensor) -> torch.Tensor:
        return (xs - self.mean) / (self.std + torch.finfo(xs.dtype).eps)
