import dataclasses

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree


class ShiftConv2d(eqx.Module):
    """A 2-D convolution computed as shifted slices and one `einsum` (no
    `lax.conv`), with the weights of an `eqx.nn.Conv2d`. Slower than `lax.conv` in
    straight-line code, but about 5x faster inside a loop on XLA:CPU, where `lax.conv`
    runs about 15x slower than outside one (measured on 2 cores, jax 0.10.2): use it,
    through [`loop_friendly`][], to sample a convolutional model with a diffrax solve."""

    weight: Float[Array, "o c kh kw"]
    bias: Float[Array, "o 1 1"] | None
    stride: tuple[int, int] = eqx.field(static=True)
    padding: tuple[tuple[int, int], tuple[int, int]] = eqx.field(static=True)

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "o h2 w2"]:
        (plo_h, phi_h), (plo_w, phi_w) = self.padding
        xp = jnp.pad(x, ((0, 0), (plo_h, phi_h), (plo_w, phi_w)))
        kh, kw = self.weight.shape[2:]
        ho = xp.shape[1] - kh + 1
        wo = xp.shape[2] - kw + 1
        cols = jnp.stack(
            [xp[:, i : i + ho, j : j + wo] for i in range(kh) for j in range(kw)],
            axis=1,
        )
        w = einops.rearrange(self.weight, "o c kh kw -> o c (kh kw)")
        out = jnp.einsum("ock,ckhw->ohw", w, cols)
        sh, sw = self.stride
        out = out[:, ::sh, ::sw]
        return out if self.bias is None else out + self.bias


# A convolution weight between the (out, in, kh, kw) of Equinox and PyTorch and the
# (kh, kw, in, out) of `ChannelsLastConv2d`.
FROM_OIHW = (2, 3, 1, 0)
TO_OIHW = (3, 2, 0, 1)


class ChannelsLastConv2d(eqx.Module):
    """A 2-D convolution with zero padding of one channels-last image `(H, W, C)`, its
    weight stored `(kh, kw, in, out)`: the layout XLA's CPU convolution reads, so a
    call copies no weight (an `(out, in, kh, kw)` weight, Equinox's and PyTorch's, is
    transposed on every call: about a tenth of a DDPM++ forward pass on one core).
    [`NCSNpp`][] is built of these.

    **Arguments:** `weight` `(kh, kw, in, out)`; `bias` `(out,)` or None; `stride`
    `(sh, sw)`; `padding` `((top, bottom), (left, right))`, zeros; `shifted`: compute
    it as shifted slices and one matrix product instead of `lax.conv` (what
    [`loop_friendly`][] sets: faster inside a diffrax loop on XLA:CPU). Build one
    from an `eqx.nn.Conv2d` with [`ChannelsLastConv2d.from_conv2d`][].
    """

    weight: Float[Array, "kh kw c o"]
    bias: Float[Array, " o"] | None
    stride: tuple[int, int] = eqx.field(static=True)
    padding: tuple[tuple[int, int], tuple[int, int]] = eqx.field(static=True)
    shifted: bool = eqx.field(static=True, default=False)

    @classmethod
    def from_conv2d(cls, conv: eqx.nn.Conv2d) -> "ChannelsLastConv2d":
        """The same convolution as `conv` (an `eqx.nn.Conv2d` with zero padding, one
        group and no dilation), its weight transposed once.

        **Raises:** `ValueError` naming `conv` for another padding mode, groups or
        dilation."""
        if (
            conv.padding_mode != "ZEROS"
            or conv.groups != 1
            or tuple(conv.dilation) != (1, 1)
        ):
            raise ValueError(
                "ChannelsLastConv2d.from_conv2d: `conv` must pad with zeros and have "
                f"one group and no dilation, got padding_mode={conv.padding_mode!r}, "
                f"groups={conv.groups}, dilation={tuple(conv.dilation)}."
            )
        return cls(
            jnp.transpose(conv.weight, FROM_OIHW),
            None if conv.bias is None else conv.bias.reshape(-1),
            tuple(int(s) for s in conv.stride),
            tuple(tuple(int(v) for v in p) for p in conv.padding),
        )

    def __call__(self, x: Float[Array, "h w c"]) -> Float[Array, "h2 w2 o"]:
        if self.shifted:
            out = self._shifted(x)
        else:
            out = jax.lax.conv_general_dilated(
                x[None],
                self.weight,
                window_strides=self.stride,
                padding=self.padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )[0]
        return out if self.bias is None else out + self.bias[None, None, :]

    def _shifted(self, x):
        (plo_h, phi_h), (plo_w, phi_w) = self.padding
        xp = jnp.pad(x, ((plo_h, phi_h), (plo_w, phi_w), (0, 0)))
        kh, kw, c, o = self.weight.shape
        ho, wo = xp.shape[0] - kh + 1, xp.shape[1] - kw + 1
        sh, sw = self.stride
        cols = jnp.concatenate(
            [
                xp[i : i + ho : sh, j : j + wo : sw]
                for i in range(kh)
                for j in range(kw)
            ],
            axis=-1,
        )
        return cols @ self.weight.reshape(kh * kw * c, o)


def _convert(m):
    if isinstance(m, ChannelsLastConv2d):
        return dataclasses.replace(m, shifted=True)
    if isinstance(m, eqx.nn.Conv2d):
        if m.groups != 1 or tuple(m.dilation) != (1, 1):
            return m
        pad = tuple(tuple(int(v) for v in p) for p in m.padding)
        bias = None if m.bias is None else m.bias.reshape(-1, 1, 1)
        return ShiftConv2d(m.weight, bias, tuple(int(s) for s in m.stride), pad)
    return m


def loop_friendly(model: PyTree) -> PyTree:
    """`model` with every `eqx.nn.Conv2d` replaced by an equivalent [`ShiftConv2d`][]
    and every [`ChannelsLastConv2d`][] computed as shifted slices (same weights, same
    outputs up to float rounding). Sampling runs the score inside
    a diffrax loop, where this is about 5x faster on CPU; keep the original for
    training (unrolled steps, where `lax.conv` is faster)."""
    is_conv = lambda x: isinstance(x, (eqx.nn.Conv2d, ChannelsLastConv2d))  # noqa: E731
    return jax.tree_util.tree_map(_convert, model, is_leaf=is_conv)
