"""TRL's RewardTrainer for stage rm, taking the data pipeline's tokenized pairs as they are."""

import torch
from trl import RewardTrainer


class PairRewardTrainer(RewardTrainer):
    """TRL's RewardTrainer with two changes: our pairs are already tokenized and cut to cutoff_len, so
    `_prepare_dataset` passes them through (TRL would filter them by its own max_length); and `eval_accuracy` counts
    pairs (TRL averages per-batch accuracies, which weighs a short last batch like a full one)."""

    _tally = (0, 0)  # (pairs ranked right, pairs) over the evaluation in progress

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if not self.model.training:
            chosen, rejected = outputs.logits.squeeze(-1).chunk(2)
            counts = torch.tensor([(chosen > rejected).sum().item(), chosen.numel()], device=chosen.device)
            right, total = self.accelerator.gather(counts).view(-1, 2).sum(0).tolist()
            self._tally = (self._tally[0] + right, self._tally[1] + total)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, start_time=None):
        if not self.model.training and self._tally[1]:
            self._metrics["eval"]["accuracy"] = [self._tally[0] / self._tally[1]]
            self._tally = (0, 0)
        super().log(logs, start_time)
