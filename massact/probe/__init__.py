"""Probing: statistics of every transformer layer from a model's forward pass.

Modules: `_hooks` (layer discovery for Hugging Face, TransformerLens and nnsight models, the
forward-hook collector, TransformerLens and plain-tensor adapters), `_monitor` (RatioMonitor and
the HF Trainer callback for training loops).
Imports: massact.stats.
"""

from ._hooks import LayerStatsCollector as LayerStatsCollector
from ._hooks import collect_layer_stats as collect_layer_stats
from ._hooks import decoder_layers as decoder_layers
from ._hooks import layer_names as layer_names
from ._hooks import layer_stacks as layer_stacks
from ._hooks import stats_of as stats_of
from ._hooks import transformer_lens_hook as transformer_lens_hook
from ._monitor import RatioMonitor as RatioMonitor
from ._monitor import RatioMonitorCallback as RatioMonitorCallback
