"""Reading the paper's official PyTorch checkpoints without torch and without running
pickled code: a restricted unpickler that only rebuilds tensors from the zip's raw
storages with NumPy, then a name table that maps them onto an [`NCSNpp`][]."""

import collections
import dataclasses
import json
import os
import pickle
import zipfile
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._custom_types import ScalarLike
from .._sde import AbstractSDE, SubVPSDE, VESDE, VPSDE
from ._conv import ChannelsLastConv2d, FROM_OIHW, TO_OIHW
from ._ncsnpp import (
    GaussianFourierFeatures,
    NCSNpp,
    NCSNppConfig,
    NIN,
    paper_config,
    PAPER_MODELS,
)


_DATA_FIELDS = ("image_size", "num_channels", "centered")


_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.dtype = np.dtype(_DTYPES[name])


def _rebuild_tensor_v2(storage, offset, size, stride, *_):
    data, itemsize = storage, storage.dtype.itemsize
    # The file says where the tensor lies in its storage: check that it lies inside
    # before striding over it (as_strided itself would read past the buffer).
    ints = (offset, *size, *stride)
    if not (
        isinstance(storage, np.ndarray)
        and all(isinstance(i, int) and i >= 0 for i in ints)
        and len(size) == len(stride)
    ):
        raise pickle.UnpicklingError("a tensor with an invalid layout")
    last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
    if (0 in size and offset > data.size) or (0 not in size and last >= data.size):
        raise pickle.UnpicklingError("a tensor that reaches past its storage")
    if not size:
        return data[offset].copy()
    return np.lib.stride_tricks.as_strided(
        data[offset:],
        shape=tuple(size),
        strides=tuple(s * itemsize for s in stride),
        writeable=False,
    ).copy()


def _rebuild_parameter(data, *_):
    return data


class CheckpointError(ValueError):
    """An official checkpoint that cannot be read or does not fit its configuration."""


class _Unpickler(pickle.Unpickler):
    """Only the names a `torch.save` of tensors, dicts and numbers needs; everything
    else (any other callable a pickle could name) is refused."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(file)
        self._archive, self._prefix, self._path = archive, prefix, path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise CheckpointError(
            f"{self._path}: refusing to load {module}.{name} from the pickle (only "
            f"tensors, dicts and numbers are read from an official checkpoint)."
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"{self._path}: unexpected persistent id {pid!r}.")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._path}: unexpected storage type.")
        if key not in self._storages:
            try:
                raw = self._archive.read(f"{self._prefix}data/{key}")
            except KeyError:
                raise CheckpointError(
                    f"{self._path}: storage {key} is missing from the archive "
                    f"(truncated or damaged checkpoint)."
                ) from None
            self._storages[key] = np.frombuffer(raw, storage_type.dtype)
        return self._storages[key]


def read_torch_checkpoint(path: str | os.PathLike) -> dict:
    """The object `torch.save` wrote to `path` (zip format), with tensors as NumPy
    arrays, read without torch; pickles naming anything but tensors, dicts and numbers
    are refused with a [`CheckpointError`][]."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file.")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{path}: not a zip archive (an official checkpoint is a torch.save zip; "
            f"the file is truncated or not a checkpoint)."
        ) from None
    with archive:
        pkls = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkls) != 1:
            raise CheckpointError(
                f"{path}: not a torch checkpoint (no data.pkl in the zip archive)."
            )
        prefix = pkls[0][: -len("data.pkl")]
        try:
            with archive.open(pkls[0]) as f:
                return _Unpickler(f, archive, prefix, path).load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError) as e:
            raise CheckpointError(
                f"{path}: the checkpoint's pickle cannot be read ({e}); the file is "
                f"truncated or damaged."
            ) from None


# --------------------------------------------------------------------------- names


def _named(prefix: str, module) -> list[tuple[str, Any]]:
    if isinstance(module, GaussianFourierFeatures):
        return [(prefix + "W", module.W)]
    if isinstance(module, NIN):
        return [(prefix + "W", module.W), (prefix + "b", module.b)]
    if isinstance(module, (eqx.nn.Linear, ChannelsLastConv2d, eqx.nn.GroupNorm)):
        return [(prefix + "weight", module.weight), (prefix + "bias", module.bias)]
    out = []
    for sub, child in module.official():
        out.extend(_named(f"{prefix}{sub}.", child))
    return out


def _official_leaves(net: NCSNpp) -> list[tuple[str, Any]]:
    """`(name, leaf)` for every parameter of `net` (the leaves themselves, in the
    network's layouts) under its official name, in the official order."""
    out = []
    for i, module in enumerate(net.official_modules()):
        out.extend(_named(f"all_modules.{i}.", module))
    return out


def _official_shape(leaf) -> tuple[int, ...]:
    # The only 4-D parameters are convolution weights: (kh, kw, in, out) here, (out,
    # in, kh, kw) in the official state dict.
    shape = tuple(leaf.shape)
    return tuple(shape[i] for i in TO_OIHW) if len(shape) == 4 else shape


def official_parameters(net: NCSNpp) -> list[tuple[str, Any]]:
    """`(name, array)` for every parameter of `net` under its official state-dict name
    (`all_modules.{i}.{layer}.{weight|bias|W|b}`, without the `module.` prefix) and in
    its official layout (convolution weights `(out, in, kh, kw)`), in the official
    order (that of `model.parameters()`); `net` may be abstract
    (`eqx.filter_eval_shape`)."""
    return [(n, _to_official(a)) for n, a in _official_leaves(net)]


def _to_official(a):
    if len(a.shape) != 4:
        return a
    if isinstance(a, jax.ShapeDtypeStruct):  # an abstract network's
        return jax.ShapeDtypeStruct(_official_shape(a), a.dtype)
    return jnp.transpose(a, TO_OIHW)


def official_state_dict_shapes(net: NCSNpp) -> dict[str, tuple[int, ...]]:
    """The official state dict's parameter names and shapes for `net` (the buffer
    `sigmas` of the official model is not a parameter and is left out); `net` may be
    abstract (`eqx.filter_eval_shape`)."""
    return {n: _official_shape(a) for n, a in _official_leaves(net)}


def _with_weights(net: NCSNpp, state: dict, path: str) -> NCSNpp:
    named = _official_leaves(net)
    arrays = []
    for name, leaf in named:
        if name not in state:
            raise CheckpointError(
                f"{path}: tensor {name!r} is missing from the checkpoint (the "
                f"configuration does not match the checkpoint)."
            )
        value = np.asarray(state[name])
        want = _official_shape(leaf)
        if tuple(value.shape) != want:
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(value.shape)} in the "
                f"checkpoint but {want} in the configuration (the configuration "
                f"does not match the checkpoint)."
            )
        if value.ndim == 4:
            value = value.transpose(FROM_OIHW)
        arrays.append(jnp.asarray(value, leaf.dtype))
    known = {n for n, _ in named} | {"sigmas"}
    extra = [k for k in state if k not in known]
    if extra:
        raise CheckpointError(
            f"{path}: the checkpoint has tensor {extra[0]!r}, which the configuration "
            f"lacks (the configuration does not match the checkpoint)."
        )
    return _replace_leaves(net, [a for _, a in named], arrays)


def _replace_leaves(tree, old: list, new: list):
    """`tree` with the leaves `old` (by identity) replaced by `new`; every leaf must be
    among them."""
    by_id = {id(o): n for o, n in zip(old, new, strict=True)}
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if len(by_id) != len(old) or any(id(leaf) not in by_id for leaf in leaves):
        raise AssertionError("the official name table does not cover the network")
    return jax.tree_util.tree_unflatten(treedef, [by_id[id(leaf)] for leaf in leaves])


# --------------------------------------------------------------------------- configs

_MODEL_FIELDS = tuple(
    f.name for f in dataclasses.fields(NCSNppConfig) if f.name not in _DATA_FIELDS
)


def read_official_config(config: "str | os.PathLike | dict") -> dict:
    """The official config as a dict: `config` is one as a dict (the sections `model`,
    `data`, `training` of the official `configs/*.py`, as in the fixtures'
    `config.json`), or the path of such a JSON file."""
    if isinstance(config, dict):
        return config
    path = os.fspath(config)
    if not os.path.isfile(path):
        raise ValueError(
            f"config: {path!r} is neither one of the paper's configurations "
            f"({', '.join(OFFICIAL_CONFIGS + PAPER_MODELS)}) nor a JSON file."
        )
    try:
        with open(path) as f:
            out = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"config: {path}: not a JSON official config ({e}).") from None
    if not isinstance(out, dict) or "model" not in out:
        raise ValueError(
            f"config: {path}: not an official config (no `model` section)."
        )
    return out


def network_config(config: "str | os.PathLike | dict | NCSNppConfig") -> NCSNppConfig:
    """The [`NCSNppConfig`][] of `config`: one of the paper's configurations by name
    (see [`PAPER_MODELS`][]), an official config dict or JSON file, or an
    `NCSNppConfig` itself."""
    if isinstance(config, NCSNppConfig):
        return config
    if isinstance(config, str) and config in PAPER_MODELS:
        return paper_config(config)
    if isinstance(config, str) and config in _OFFICIAL:
        return paper_config(_OFFICIAL[config][0])
    cfg = read_official_config(config)
    model, data = cfg.get("model", {}), cfg.get("data", {})
    name = model.get("name", "ncsnpp")
    if name != "ncsnpp":
        raise ValueError(
            f"config: model.name is {name!r}; only the official 'ncsnpp' network "
            f"(NCSN++ and DDPM++) is supported."
        )
    kwargs = {k: model[k] for k in _MODEL_FIELDS if k in model}
    for k in _DATA_FIELDS:
        if k in data:
            kwargs[k] = data[k]
    for k in ("ch_mult", "attn_resolutions", "fir_kernel"):
        if k in kwargs:
            kwargs[k] = tuple(kwargs[k])
    for k in ("dropout", "fourier_scale", "init_scale"):
        if isinstance(kwargs.get(k), int) and not isinstance(kwargs[k], bool):
            kwargs[k] = float(kwargs[k])
    return NCSNppConfig(**kwargs)


def load_official(
    path: str | os.PathLike,
    config: "str | os.PathLike | dict | NCSNppConfig",
    *,
    ema: bool = True,
) -> NCSNpp:
    """An [`NCSNpp`][] holding the weights of an official checkpoint of the paper
    (`checkpoint_*.pth` of yang-song/score_sde_pytorch), read without torch and
    without running pickled code.

    **Arguments:**

    - `path`: the checkpoint (the training checkpoint `{'model', 'ema', 'optimizer',
      'step'}`, or a bare state dict).
    - `config`: the network's configuration: a paper configuration's name (see
      [`PAPER_MODELS`][]), the official config as a dict or JSON file, or an
      [`NCSNppConfig`][].
    - `ema`: the exponential moving average of the weights (what the paper samples
      with), else the raw training weights.

    Raises [`CheckpointError`][] (a `ValueError`) naming the file and the problem.
    """
    path = os.fspath(path)
    cfg = network_config(config)
    return _load(read_torch_checkpoint(path), cfg, path, ema)


def load_official_checkpoint(
    path: str | os.PathLike, config: "str | os.PathLike | dict | NCSNppConfig"
) -> tuple[NCSNpp, NCSNpp, int]:
    """`(ema_net, raw_net, step)` of an official training checkpoint, reading the file
    once (what `scoresde convert` writes); see [`load_official`][]."""
    path = os.fspath(path)
    cfg = network_config(config)
    ckpt = read_torch_checkpoint(path)
    if not isinstance(ckpt, dict) or "step" not in ckpt:
        raise CheckpointError(
            f"{path}: not an official training checkpoint (no 'step' entry)."
        )
    step = int(np.asarray(ckpt["step"]))
    return _load(ckpt, cfg, path, True), _load(ckpt, cfg, path, False), step


def _load(ckpt, cfg: NCSNppConfig, path: str, ema: bool) -> NCSNpp:
    if isinstance(ckpt, dict) and "model" in ckpt:
        state = ckpt["model"]
    else:
        state = ckpt
        if ema:
            raise CheckpointError(
                f"{path}: a bare state dict holds no EMA weights; pass ema=False."
            )
    if not isinstance(state, dict) or not all(
        isinstance(v, np.ndarray) for v in state.values()
    ):
        raise CheckpointError(f"{path}: not an official checkpoint (no model state).")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = eqx.filter_eval_shape(NCSNpp, config=cfg, key=jax.random.key(0))
    names = [n for n, _ in _official_leaves(net)]
    if ema and "model" in ckpt:
        shadow = (ckpt.get("ema") or {}).get("shadow_params")
        if not isinstance(shadow, list):
            raise CheckpointError(f"{path}: no EMA weights (ema.shadow_params).")
        # shadow_params follows model.parameters() restricted to requires_grad: the
        # Fourier features' fixed W is not in it.
        trained = [n for n in names if not _is_fixed(n, net)]
        if len(shadow) != len(trained):
            raise CheckpointError(
                f"{path}: {len(shadow)} EMA tensors but the configuration has "
                f"{len(trained)} trained parameters (the configuration does not "
                f"match the checkpoint)."
            )
        state = dict(state)
        for n, v in zip(trained, shadow, strict=True):
            if n in state and tuple(state[n].shape) != tuple(v.shape):
                raise CheckpointError(
                    f"{path}: EMA tensor for {n!r} has shape {tuple(v.shape)} but the "
                    f"model's has {tuple(state[n].shape)}."
                )
            state[n] = v
    return _with_weights(net, state, path)


def _is_fixed(name: str, net: NCSNpp) -> bool:
    return net.fourier is not None and name == "all_modules.0.W"


# --------------------------------------------------------------------------- the score


# The paper's released continuous-time checkpoints: official config name -> (network
# configuration, SDE class name, SDE parameters).
_OFFICIAL = {
    "ve/cifar10_ncsnpp_continuous": ("cifar10_ncsnpp", "VESDE", (0.01, 50.0)),
    "ve/cifar10_ncsnpp_deep_continuous": ("cifar10_ncsnpp_deep", "VESDE", (0.01, 50.0)),
    "vp/cifar10_ddpmpp_continuous": ("cifar10_ddpmpp", "VPSDE", (0.1, 20.0)),
    "vp/cifar10_ddpmpp_deep_continuous": ("cifar10_ddpmpp_deep", "VPSDE", (0.1, 20.0)),
    "subvp/cifar10_ddpmpp_continuous": ("cifar10_ddpmpp", "SubVPSDE", (0.1, 20.0)),
    "subvp/cifar10_ddpmpp_deep_continuous": (
        "cifar10_ddpmpp_deep",
        "SubVPSDE",
        (0.1, 20.0),
    ),
    "ve/ffhq_ncsnpp_continuous": ("ffhq_1024_ncsnpp", "VESDE", (0.01, 1348.0)),
    "ve/celebahq_256_ncsnpp_continuous": (
        "celebahq_256_ncsnpp",
        "VESDE",
        (0.01, 348.0),
    ),
}
OFFICIAL_CONFIGS: tuple[str, ...] = tuple(_OFFICIAL)
"""The official config names (`configs/<sde>/<name>.py` of the paper's code) of its
released continuous-time checkpoints, accepted as `config` by [`load_official`][]."""
_SDE_CLASSES = {"VESDE": VESDE, "VPSDE": VPSDE, "SubVPSDE": SubVPSDE}
_SDE_NAMES = {"vesde": "VESDE", "vpsde": "VPSDE", "subvpsde": "SubVPSDE"}


def official_sde(config: "str | os.PathLike | dict") -> AbstractSDE:
    """The SDE an official checkpoint was trained for: `config` is an official config
    name (see [`OFFICIAL_CONFIGS`][]), dict or JSON file (its `training.sde` and
    `model.sigma_min`/`sigma_max` or `beta_min`/`beta_max`)."""
    if isinstance(config, str) and config in _OFFICIAL:
        _, name, (a, b) = _OFFICIAL[config]
    else:
        if isinstance(config, str) and config in PAPER_MODELS:
            raise ValueError(
                f"config: {config!r} names a network, not its SDE; give an official "
                f"config name ({', '.join(OFFICIAL_CONFIGS)}) or the config itself."
            )
        cfg = read_official_config(config)
        sde = cfg.get("training", {}).get("sde")
        if sde not in _SDE_NAMES:
            raise ValueError(
                f"config: training.sde must be one of {', '.join(_SDE_NAMES)}, got "
                f"{sde!r}."
            )
        name, model = _SDE_NAMES[sde], cfg["model"]
        keys = (
            ("sigma_min", "sigma_max") if name == "VESDE" else ("beta_min", "beta_max")
        )
        if any(k not in model for k in keys):
            raise ValueError(f"config: model.{keys[0]} and model.{keys[1]} are needed.")
        a, b = (float(model[k]) for k in keys)
    return _SDE_CLASSES[name](a, b)


class OfficialScore(eqx.Module):
    r"""The score of an official network with the official time conventions
    (`models.utils.get_score_fn(..., continuous=True)` of the paper's code):

    - VE SDE: the network is given $\sigma(t)$ itself (note: this package's
      `VESDE.std(t)` is the exact $\sqrt{\sigma(t)^2 - \sigma_\min^2}$, the paper's
      code uses $\sigma(t)$; the network must see what it was trained with), and its
      output is the score (it divides by $\sigma$ itself when `scale_by_sigma`);
    - VP and sub-VP SDEs: the network is given $999\,t$ and predicts the noise; the
      score is $-\text{output} / s(t)$.

    Samples and data live in the network's data range: `[-1, 1]` when the config is
    `centered`, else `[0, 1]` (its `data_range`).

    **Arguments:** `net` (an [`NCSNpp`][], e.g. from [`load_official`][]) and `sde`
    (the SDE it was trained for, e.g. [`official_sde`][]).

    Called as `score(t, x)` on one example.
    """

    net: NCSNpp
    sde: AbstractSDE

    def __check_init__(self):
        if not isinstance(self.net, NCSNpp):
            raise TypeError(
                f"OfficialScore: `net` must be an sd.nn.NCSNpp, got "
                f"{type(self.net).__name__}."
            )
        if type(self.sde) not in _SDE_CLASSES.values():
            raise TypeError(
                f"OfficialScore: `sde` must be sd.VESDE, sd.VPSDE or sd.SubVPSDE, got "
                f"{type(self.sde).__name__}."
            )

    @property
    def data_range(self) -> tuple[float, float]:
        """`(-1, 1)` for a centered network, else `(0, 1)`."""
        return (-1.0, 1.0) if self.net.config.centered else (0.0, 1.0)

    def __call__(
        self, t: ScalarLike, x: Float[ArrayLike, "c h w"]
    ) -> Float[Array, "c h w"]:
        if isinstance(self.sde, VESDE):
            return self.net(self.sde.sigma(t), x)
        out = self.net(999.0 * jnp.asarray(t), x)
        return -out / self.sde.std(t)


def load_official_score(
    path: str | os.PathLike,
    config: "str | os.PathLike | dict",
    *,
    ema: bool = True,
) -> OfficialScore:
    """[`load_official`][] and [`official_sde`][] in one: the official checkpoint at
    `path` as a score model `score(t, x)` ([`OfficialScore`][]) of the SDE its
    `config` (an official config name, dict or JSON file) names; its `sde` field is
    that SDE, to pass to `sd.sample`, `sd.log_likelihood`, ..."""
    sde = official_sde(config)
    return OfficialScore(load_official(path, config, ema=ema), sde)
