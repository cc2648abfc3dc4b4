"""The ADM UNet of OpenAI's guided-diffusion checkpoints, with their parameter names."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ADMConfig:
    """Architecture of an ADM UNet (the fields of guided-diffusion's ``create_model``).

    ``attention_resolutions`` are feature-map sizes in pixels (``(16,)`` means attention
    where the map is 16 x 16, i.e. at down-sampling ``image_size // 16``);
    ``num_head_channels`` fixes the width of a head (``-1``: use ``num_heads`` heads);
    ``learn_sigma`` doubles the output channels (variances, dropped by the denoiser);
    ``use_new_attention_order`` picks the q/k/v channel layout (``False``: the legacy
    layout of the published 256 x 256 checkpoints).
    """

    image_size: int
    model_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    channel_mult: tuple[float, ...]
    num_head_channels: int = 64
    num_heads: int = 4
    in_channels: int = 3
    learn_sigma: bool = True
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    use_new_attention_order: bool = False
    dropout: float = 0.0

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def check(self) -> None:
        """Reject configurations the network cannot be built with."""
        if self.image_size % self.downsampling:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of 2**(len(channel_mult) - 1) = {self.downsampling}"
            )
        widths = {int(self.model_channels * m) for m in self.channel_mult}
        if any(width % 32 for width in widths):
            raise ValueError(
                "every level width (model_channels * channel_mult) must be a multiple of 32 (GroupNorm(32)), "
                f"got {sorted(widths)}"
            )
        if self.num_head_channels != -1 and any(width % self.num_head_channels for width in widths):
            raise ValueError(
                f"num_head_channels {self.num_head_channels} must divide every level width {sorted(widths)}"
            )


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos(t w_k), sin(t w_k)]``, ``w_k = max_period^(-k / (dim/2))`` (float32).

    Vaswani et al. 2017, as used by Ho et al. 2020 and ADM; ``t`` may be fractional.
    """
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, computed in at least float32 and cast back (stable in half precision)."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)
        weight, bias = self.weight.to(compute), self.bias.to(compute)
        return F.group_norm(x.to(compute), self.num_groups, weight, bias, self.eps).to(x.dtype)


class Resample(nn.Module):
    """Nearest up-sampling or 2 x 2 average-pool down-sampling, with an optional 3 x 3 convolution.

    The parameter is named ``conv`` for up-sampling and ``op`` (stride-2 convolution)
    for down-sampling, as in the published state dicts.
    """

    def __init__(self, channels: int, up: bool, use_conv: bool):
        super().__init__()
        self.up = up
        self.use_conv = use_conv
        if use_conv and up:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        elif use_conv:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            return self.conv(x) if self.use_conv else x
        return self.op(x) if self.use_conv else F.avg_pool2d(x, 2)


class ResBlock(nn.Module):
    r"""Residual block conditioned on the time embedding (Dhariwal & Nichol 2021, Sec. 3).

    ``h = conv(SiLU(GN(x)))`` (re-sampled between the activation and the convolution
    when ``up`` / ``down``, and so is the skip path); then with scale-shift norm
    (FiLM, "AdaGN") ``h = conv(dropout(SiLU(GN(h) (1 + s) + b)))`` with
    ``(s, b) = Linear(SiLU(emb))``, otherwise ``h = out_layers(h + Linear(SiLU(emb)))``;
    the output is ``skip(x) + h`` where ``skip`` is a 1 x 1 convolution when the
    channel count changes.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        dropout: float,
        use_scale_shift_norm: bool,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        self.resample = Resample(channels, up=up, use_conv=False) if self.updown else None
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.resample is not None:
            h = self.in_layers[2](self.resample(self.in_layers[1](self.in_layers[0](x))))
            x = self.resample(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    r"""Multi-head self-attention over the pixels of a feature map, with a residual connection.

    ``qkv = Conv1d(GN(x))`` has ``3 C`` channels.  In the legacy layout of the
    published checkpoints they are grouped per head, ``[q_h, k_h, v_h]`` blocks of
    ``3 c`` channels for head ``h`` (``c = C / heads``); in the new layout all ``q``
    come first, then all ``k``, then all ``v``.  Each head computes
    ``softmax(q^T k / sqrt(c)) v``, heads are concatenated and
    ``x + proj_out(a)`` is returned (Vaswani et al. 2017; Dhariwal & Nichol 2021).
    """

    def __init__(self, channels: int, num_heads: int, new_order: bool):
        super().__init__()
        self.num_heads = num_heads
        self.new_order = new_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        flat = x.reshape(batch, channels, height * width)
        qkv = self.qkv(self.norm(flat))
        head = channels // self.num_heads
        if self.new_order:
            qkv = qkv.reshape(batch, 3, self.num_heads, head, -1).transpose(1, 2)
        else:
            qkv = qkv.reshape(batch, self.num_heads, 3, head, -1)
        q, k, v = (qkv[:, :, i].transpose(-1, -2) for i in range(3))
        attended = F.scaled_dot_product_attention(q, k, v)
        attended = attended.transpose(-1, -2).reshape(batch, channels, height * width)
        return (flat + self.proj_out(attended)).reshape(batch, channels, height, width)


class TimestepSequential(nn.Sequential):
    """A sequence of layers of which the residual blocks also receive the time embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    r"""The ablated diffusion model (ADM) UNet, ``eps_theta(x_t, t)`` (Dhariwal & Nichol 2021).

    Time embedding: sinusoidal features of ``t`` (width ``model_channels``) through
    ``Linear - SiLU - Linear`` to ``4 * model_channels``.  Encoder: a 3 x 3 convolution,
    then per level ``num_res_blocks`` residual blocks of width
    ``model_channels * channel_mult[level]`` (each followed by attention where the
    feature map's size is in ``attention_resolutions``) and, except at the last
    level, a down-sampling block (a residual block with average pooling when
    ``resblock_updown``, as in BigGAN).  Middle: residual block, attention, residual
    block.  Decoder: the mirror image with ``num_res_blocks + 1`` blocks per level,
    each taking the concatenation with the matching encoder activation, and
    nearest-neighbour up-sampling blocks.  Output: ``GN - SiLU - conv`` to
    ``out_channels`` (``eps`` then, with learned sigma, the variance interpolation
    ``v`` of Nichol & Dhariwal 2021).  Module and parameter names follow the
    released state dicts (``time_embed``, ``input_blocks``, ``middle_block``,
    ``output_blocks``, ``out``), so they load with ``strict=True``.
    """

    def __init__(self, config: ADMConfig):
        super().__init__()
        config.check()
        self.config = config
        width = config.model_channels
        emb = 4 * width
        self.time_embed = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        attention_at = {config.image_size // size for size in config.attention_resolutions}

        def block(channels: int, out: int, **updown: bool) -> ResBlock:
            return ResBlock(channels, emb, out, config.dropout, config.use_scale_shift_norm, **updown)

        def attention(channels: int) -> AttentionBlock:
            heads = config.num_heads if config.num_head_channels == -1 else channels // config.num_head_channels
            return AttentionBlock(channels, heads, config.use_new_attention_order)

        def resample(channels: int, up: bool) -> nn.Module:
            if config.resblock_updown:
                return block(channels, channels, up=up, down=not up)
            return Resample(channels, up=up, use_conv=config.conv_resample)

        channels = int(config.channel_mult[0] * width)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(config.in_channels, channels, 3, padding=1))])
        skips, factor = [channels], 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [block(channels, int(mult * width))]
                channels = int(mult * width)
                if factor in attention_at:
                    layers.append(attention(channels))
                self.input_blocks.append(TimestepSequential(*layers))
                skips.append(channels)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(resample(channels, up=False)))
                skips.append(channels)
                factor *= 2
        self.middle_block = TimestepSequential(block(channels, channels), attention(channels), block(channels, channels))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [block(channels + skips.pop(), int(mult * width))]
                channels = int(mult * width)
                if factor in attention_at:
                    layers.append(attention(channels))
                if level and i == config.num_res_blocks:
                    layers.append(resample(channels, up=True))
                    factor //= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, config.out_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``eps`` (and, with learned sigma, the variance channels) for ``x_t`` at timesteps ``t`` of shape ``(N,)``."""
        emb_in = timestep_embedding(t, self.config.model_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(emb_in)
        h, skips = x, []
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
