"""wmtp_hf: Weighted Multi-Token Prediction for code LLMs, native to HuggingFace Transformers.

Importing the package registers the `wmtp` model type with `AutoConfig`, `AutoModel` and
`AutoModelForCausalLM`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_wmtp import WmtpConfig
from .modeling_wmtp import WmtpForMultiTokenPrediction, WmtpModel, WmtpPreTrainedModel

__version__ = "0.1.0"

AutoConfig.register(WmtpConfig.model_type, WmtpConfig, exist_ok=True)
AutoModel.register(WmtpConfig, WmtpModel, exist_ok=True)
AutoModelForCausalLM.register(WmtpConfig, WmtpForMultiTokenPrediction, exist_ok=True)
WmtpConfig.register_for_auto_class()
WmtpModel.register_for_auto_class("AutoModel")
WmtpForMultiTokenPrediction.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["WmtpConfig", "WmtpModel", "WmtpPreTrainedModel", "WmtpForMultiTokenPrediction", "__version__"]
