"""Attention dropout: the checkpoint's, or none where it costs the fused attention kernel. The one place that decides it.

`train.attention_dropout` is "auto" (the default), "model" (the checkpoint's
config, e.g. BERT's `attention_probs_dropout_prob = 0.1`) or a probability.
Only the dropout on the attention probabilities is concerned; the hidden-state
dropout stays the model's.

What "auto" picks, and why:
- CPU: none (0.0). PyTorch's CPU scaled-dot-product attention has one fused kernel, flash, and
  `check_for_dropout` (aten/src/ATen/native/transformers/sdp_utils_cpp.h: "Both fused kernels do not
  support non-zero dropout") is among its constraints in `use_flash_attention_cpp` (sdp_utils_cpp.cpp).
  With `dropout_p > 0` in training it falls back to `_scaled_dot_product_attention_math` (attention.cpp),
  which builds the whole attention matrix and draws a Bernoulli mask over it. Measured on
  all-MiniLM-L6-v2 at 192 tokens: steps 1.27x (fp32) to 1.33x (bf16) faster without it, and final scores
  within the tolerance (docs/benchmarks.md, "Attention dropout"). tests/test_attention_dropout.py checks the
  kernel choice against the installed torch.
- CUDA: the model's. The flash and memory-efficient kernels take dropout (cuda/sdp_utils.cpp has no
  dropout check for them; only cuDNN's, tried first on sm90/sm100, refuses a p that is not a multiple
  of 1/16, and then flash or memory-efficient run instead): no math path.
- MPS: the model's. attention.cpp takes the MPS kernel (`_scaled_dot_product_attention_math_for_mps`)
  only for `dropout_p == 0.0 && !(GradMode::is_enabled() && any_inputs_require_grad)`: in training it
  runs the generic math path either way, so no dropout buys no kernel there (torch 2.5 to 2.13).
The value is set in the config the model is built from (mtld.train.model.load_encoder): transformers
reads it when it builds the attention layers (BERT in 5.x: `self.dropout = nn.Dropout(config.
attention_probs_dropout_prob)`, then `dropout=0.0 if not self.training else self.dropout.p`; 4.56's
BertSdpaSelfAttention keeps `self.dropout_prob` from the same config key). DeBERTa-v2 has its own attention
(no kernel to gain); ModernBERT's `attention_dropout` also drives its attention output's dropout.
"""

from __future__ import annotations

from typing import Literal

AttentionDropoutSetting = Literal["auto", "model"] | float
# What the checkpoint's config calls it: BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa(-v2): the first;
# DistilBERT, ModernBERT: the second.
CONFIG_NAMES = ("attention_probs_dropout_prob", "attention_dropout")
AUTO_OFF_DEVICES = ("cpu",)


def resolve_attention_dropout(setting: AttentionDropoutSetting, device_type: str) -> tuple[float | None, str]:
    """The attention dropout a run trains with on `device_type` (None: the model's own), and why."""
    if setting == "model":
        return None, "the model's (asked for)"
    if not isinstance(setting, str):
        return float(setting), f"{setting:g} (asked for)"
    if device_type in AUTO_OFF_DEVICES:
        return 0.0, (f"off: on {device_type} attention dropout keeps scaled-dot-product attention off its fused "
                     f"kernel (1.27-1.33x slower steps, docs/benchmarks.md)")
    return None, f"the model's: on {device_type} it costs no attention kernel"
