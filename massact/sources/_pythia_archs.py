"""The Pythia suite's architectures and checkpoint schedule: the one table every source uses.

massact.sources._pythia (checkpoint sweeps) and massact.sources._archive (the released statistics)
both import from here, so sizes, parameter counts and the final step cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

FINAL_STEP = 143000  # every Pythia model trained for 143000 steps (step143000 = main)
# 0, 1, 2, 4, ..., 512, then every 1000 steps: the 154 checkpoints of every Pythia model
PYTHIA_STEPS: tuple[int, ...] = (0, *(2**i for i in range(10)), *range(1000, FINAL_STEP + 1, 1000))


@dataclass(frozen=True)
class PythiaArch:
    """Pythia architecture: d_ff = 4d, rotary on 25% of head dims (base 10000), parallel
    residual attention + MLP, untied input/output embeddings."""

    L: int
    d: int
    H: int
    vocab_size: int = 50304
    rotary_pct: float = 0.25
    rotary_base: float = 10000.0
    parallel_residual: bool = True

    @property
    def d_ff(self) -> int:
        return 4 * self.d

    @property
    def n_params(self) -> int:
        """Exact GPTNeoX count: untied in/out embeddings, biased linears, two LNs per layer."""
        d = self.d
        per_layer = 12 * d * d + 13 * d  # qkv+dense (4d^2+4d), mlp (8d^2+5d), 2 LNs (4d)
        return 2 * self.vocab_size * d + self.L * per_layer + 2 * d


# size -> architecture
PYTHIA_ARCHS: dict[str, PythiaArch] = {
    "14m": PythiaArch(6, 128, 4),
    "31m": PythiaArch(6, 256, 8),
    "70m": PythiaArch(6, 512, 8),
    "160m": PythiaArch(12, 768, 12),
    "410m": PythiaArch(24, 1024, 16),
    "1b": PythiaArch(16, 2048, 8),
    "1.4b": PythiaArch(24, 2048, 16),
    "2.8b": PythiaArch(32, 2560, 32),
    "6.9b": PythiaArch(32, 4096, 32, vocab_size=50432),
    "12b": PythiaArch(36, 5120, 40, vocab_size=50688),
}
# The paper's nine models (188 decoder layers): every size but 31m.
PAPER_MODELS: tuple[str, ...] = tuple(s for s in PYTHIA_ARCHS if s != "31m")
