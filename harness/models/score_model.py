"""Safe-RLHF-style score models (the layout of `PKU-Alignment/beaver-7b-v1.0-reward` / `-cost`).

On disk such a checkpoint is a LLaMA config (`model_type: llama`, `architectures:
["LlamaForScore"]`, plus `score_dim` and `bias`) and a state dict with the backbone under
`model.*` and a linear `score_head.*`. The score of a (prompt, response) text is the head's output
at the last non-padding token. We load that layout without depending on the safe-rlhf package.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel, LlamaPreTrainedModel


class LlamaForScore(LlamaPreTrainedModel):
    config_class = LlamaConfig
    base_model_prefix = "model"

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.model = LlamaModel(config)
        score_dim = getattr(config, "score_dim", 1)
        self.score_head = nn.Linear(config.hidden_size, score_dim, bias=getattr(config, "bias", False))
        config.architectures = ["LlamaForScore"]
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """End scores [B] (first score dimension) read at each row's last non-padding token."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        scores = self.score_head(hidden)[..., 0]  # [B, L]
        # Works for left or right padding: the last position whose mask is 1.
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(dim=1)
        return scores.gather(1, last.unsqueeze(1)).squeeze(1)


def new_score_config(**llama_kwargs) -> LlamaConfig:
    config = LlamaConfig(**llama_kwargs)
    config.score_dim = 1
    config.bias = False
    config.architectures = ["LlamaForScore"]
    return config
