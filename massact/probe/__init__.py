"""Probing: statistics of every transformer layer from a model's forward pass.

Modules: `_layers` (where a model's layers are: Hugging Face, TransformerLens and nnsight
layouts, names, the `layers=` choice), `_tokens` (which tokens count: the batch's padding mask,
the first-token option), `_hooks` (the forward-hook collector, TransformerLens and plain-tensor
adapters), `_monitor` (RatioMonitor and the HF Trainer callback for training loops).
Imports: massact.stats.
"""

from ._hooks import LayerStatsCollector as LayerStatsCollector
from ._hooks import collect_layer_stats as collect_layer_stats
from ._hooks import stats_of as stats_of
from ._hooks import transformer_lens_hook as transformer_lens_hook
from ._layers import decoder_layers as decoder_layers
from ._layers import layer_names as layer_names
from ._layers import layer_stacks as layer_stacks
from ._monitor import RatioMonitor as RatioMonitor
from ._monitor import RatioMonitorCallback as RatioMonitorCallback
