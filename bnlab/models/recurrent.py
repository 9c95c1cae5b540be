"""LSTM and GRU over an image's rows, written out so a norm can sit where the papers put it.

A layer's cell, at step t (x_t the input, h, c the state; ``norm_*`` from the
``norm_layer`` factory, called as ``norm(v, t)``):

    LSTM  (i, f, g, o) = norm_ih(W_ih x_t) + norm_hh(W_hh h) + b
          c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
          h' = sigmoid(o) * tanh(norm_c(c'))
    GRU   (r_i, z_i, n_i) = norm_ih(W_ih x_t) + b_ih,  (r_h, z_h, n_h) = norm_hh(W_hh h) + b_hh
          r = sigmoid(r_i + r_h),  z = sigmoid(z_i + z_h),  n = tanh(n_i + r * n_h)
          h' = (1 - z) * n + z * h

This is the placement of Cooijmans et al. 2016 (recurrent BN: input-to-hidden and
hidden-to-hidden pre-activations normalised separately, and the cell state before
its tanh; the carried c' itself is not normalised) and of Ba et al. 2016 (LayerNorm,
their eq. 20: the whole 4H-dim pre-activation vector, and the cell state) -- one
placement for every norm kind, so arms differ only in the norm. Gate order and the
GRU's b_hn inside the reset gate are torch's, so with no norm (``norm(v, t) = v``) a
layer computes exactly ``nn.LSTM`` / ``nn.GRU`` (the LSTM's b = b_ih + b_hh):
tests/test_sequence.py checks it, float64, to 1e-10.

``RowRNN`` classifies an image from the last layer's final h (a linear head); with
``train_steps`` it trains on the first ``train_steps`` rows and evaluates on all of
them (Cooijmans et al.'s test on longer sequences than those trained on).

Trainable parameters, L layers, hidden H, input I per step, 10 classes, with a
norm that has two per feature (bn, step_bn, ln) and, in brackets, one (rmsnorm)
or none (none):

    LSTM   per layer 4H(I + H) + 4H  + norms 2 x 2 x 4H + 2H  [4H + 4H + H; 0], head 10H + 10
    GRU    per layer 3H(I + H) + 6H  + norms 2 x 2 x 3H       [3H + 3H;     0], head 10H + 10

e.g. the defaults (1 layer, H = 128) on Fashion-MNIST rows (I = 28): LSTM with ln
83,978 (rmsnorm 82,826, none 81,674), GRU with ln 63,498 (none 61,962); on CIFAR-10
rows (I = 96) the LSTM with ln has 118,794. tests/test_sequence.py checks these counts.

Initialisation (``row_rnn``): each gate's block of W_hh orthogonal (Saxe et al. 2014,
as Cooijmans et al.), of W_ih Glorot-uniform; biases 0 but the LSTM's forget gate at
1 (Jozefowicz et al. 2015); the head Glorot-uniform, bias 0; norm gains as the
``norm_layer`` makes them (TimeBatchNorm: Cooijmans et al.'s 0.1). Then every weight
matrix times ``init_scale``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.models.norms import StepNormLayer
from bnlab.models.sequence import image_rows

GATES = {"lstm": 4, "gru": 3}


class _GatedLayer(nn.Module):
    """What an LSTM and a GRU layer share: the input and recurrent weights of all their
    gates, their biases (named as torch's), and a norm on each of the two pre-activations."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        norm_layer: StepNormLayer,
        gates_per_unit: int,
        biases: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        gates = gates_per_unit * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates, hidden_size))
        for name in biases:
            self.register_parameter(name, nn.Parameter(torch.zeros(gates)))
        self.norm_ih = norm_layer(gates)
        self.norm_hh = norm_layer(gates)


class LSTMLayer(_GatedLayer):
    """One LSTM layer over (B, T, I) sequences; ``forward`` returns (outputs, (h, c))."""

    def __init__(self, input_size: int, hidden_size: int, norm_layer: StepNormLayer) -> None:
        super().__init__(input_size, hidden_size, norm_layer, 4, ("bias",))
        self.norm_c = norm_layer(hidden_size)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        h, c = state
        xw = F.linear(x, self.weight_ih)  # every step's input projection in one matmul
        outputs = []
        for t in range(x.shape[1]):
            gates = self.norm_ih(xw[:, t], t) + self.norm_hh(F.linear(h, self.weight_hh), t)
            i, f, g, o = (gates + self.bias).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(self.norm_c(c, t))
            outputs.append(h)
        return torch.stack(outputs, dim=1), (h, c)


class GRULayer(_GatedLayer):
    """One GRU layer over (B, T, I) sequences; ``forward`` returns (outputs, h)."""

    def __init__(self, input_size: int, hidden_size: int, norm_layer: StepNormLayer) -> None:
        # Two biases, as torch's: b_hn sits inside the reset gate, so it is not redundant.
        super().__init__(input_size, hidden_size, norm_layer, 3, ("bias_ih", "bias_hh"))

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.new_zeros(x.shape[0], self.hidden_size) if state is None else state
        xw = F.linear(x, self.weight_ih)
        outputs = []
        for t in range(x.shape[1]):
            r_i, z_i, n_i = (self.norm_ih(xw[:, t], t) + self.bias_ih).chunk(3, dim=1)
            hw = self.norm_hh(F.linear(h, self.weight_hh), t) + self.bias_hh
            r_h, z_h, n_h = hw.chunk(3, dim=1)
            r = torch.sigmoid(r_i + r_h)
            z = torch.sigmoid(z_i + z_h)
            n = torch.tanh(n_i + r * n_h)
            h = (1 - z) * n + z * h
            outputs.append(h)
        return torch.stack(outputs, dim=1), h


class RecurrentStack(nn.Module):
    """``layers`` LSTM or GRU layers, each reading the outputs of the one below.

    ``forward(x)`` returns what ``nn.LSTM`` / ``nn.GRU`` (batch_first=True) return from
    a zero state: the last layer's outputs (B, T, H) and the final state, (h_n, c_n)
    for the LSTM, h_n for the GRU, each (layers, B, H).
    """

    def __init__(
        self, cell: str, input_size: int, hidden_size: int, layers: int, norm_layer: StepNormLayer
    ) -> None:
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"unknown recurrent cell {cell!r}; known: {', '.join(GATES)}")
        if layers < 1 or hidden_size < 1:
            raise ValueError(
                f"need at least 1 layer of at least 1 unit, got {layers} x {hidden_size}"
            )
        layer = LSTMLayer if cell == "lstm" else GRULayer
        sizes = [input_size] + [hidden_size] * (layers - 1)
        self.cell = cell
        self.layers = nn.ModuleList(layer(size, hidden_size, norm_layer) for size in sizes)

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, ...]]:
        finals = []
        for layer in self.layers:
            x, final = layer(x)
            finals.append(final)
        if self.cell == "lstm":
            h_n = torch.stack([h for h, _ in finals])
            c_n = torch.stack([c for _, c in finals])
            return x, (h_n, c_n)
        return x, torch.stack(finals)


class RowRNN(nn.Module):
    """An image classifier reading the rows as a sequence: ``rnn`` then the head ``fc``."""

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        layers: int,
        norm_layer: StepNormLayer,
        num_classes: int = 10,
        train_steps: int | None = None,
    ) -> None:
        super().__init__()
        self.rnn = RecurrentStack(cell, input_size, hidden_size, layers, norm_layer)
        self.fc = nn.Linear(hidden_size, num_classes)
        self.train_steps = train_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = image_rows(x)
        if self.training and self.train_steps is not None:
            rows = rows[:, : self.train_steps]
        outputs, _ = self.rnn(rows)
        return self.fc(outputs[:, -1])


@torch.no_grad()
def init_recurrent(net: RowRNN, scale: float = 1.0) -> None:
    """The initialisation of the module docstring; draws from torch's global RNG."""
    for layer in net.rnn.layers:
        assert isinstance(layer, (LSTMLayer, GRULayer))
        h = layer.hidden_size
        for block in layer.weight_ih.split(h):
            nn.init.xavier_uniform_(block)
        for block in layer.weight_hh.split(h):
            nn.init.orthogonal_(block)
        if isinstance(layer, LSTMLayer):
            nn.init.zeros_(layer.bias)
            layer.bias[h : 2 * h] = 1.0  # gate order i, f, g, o: the forget gate
        else:
            nn.init.zeros_(layer.bias_ih)
            nn.init.zeros_(layer.bias_hh)
        layer.weight_ih.mul_(scale)
        layer.weight_hh.mul_(scale)
    nn.init.xavier_uniform_(net.fc.weight)
    nn.init.zeros_(net.fc.bias)
    net.fc.weight.mul_(scale)


def row_rnn(*args: Any, init_scale: float = 1.0, **kwargs: Any) -> RowRNN:
    """A ``RowRNN`` (of these arguments), initialised with ``init_scale`` (seed torch's
    global RNG before calling)."""
    net = RowRNN(*args, **kwargs)
    init_recurrent(net, init_scale)
    return net
