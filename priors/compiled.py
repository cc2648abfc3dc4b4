"""A prior whose network runs under ``torch.compile`` and / or in the channels-last layout."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import Tensor

from priors.base import is_latent_prior, is_prior
from priors.wrapper import LatentPriorWrapper, PriorWrapper

#: Attribute paths, from the prior, of the networks this wrapper knows how to replace.
NETWORK_PATHS = (("unet",), ("denoiser", "unet"), ("denoiser", "transformer"))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _reason(err: BaseException) -> str:
    """The error's type and, for wrapped errors (dynamo's ``BackendCompilerFailed``), the root cause's first line."""
    root = err
    while (getattr(root, "inner_exception", None) or root.__cause__) is not None:
        root = getattr(root, "inner_exception", None) or root.__cause__
    return _first_line(err) if root is err else f"{type(err).__name__}: {_first_line(root)}"


class FastNetwork(torch.nn.Module):
    """``network`` with channels-last image inputs and, optionally, compiled by ``torch.compile``.

    Calls go to the compiled module; if compiling is impossible here (``torch.compile``
    raises when it is built or at the first call: no C++ compiler, an unsupported
    Python or platform, a backend error), the call is repeated on the eager network,
    one ``RuntimeWarning`` says why, ``fallback_reason`` keeps the reason, and every
    later call runs eagerly.  An error that the eager network raises as well is a real
    error and propagates.  Compilation changes only the order of floating-point
    operations, so results agree with the eager network to float rounding.

    ``channels_last`` converts the network's weights to ``torch.channels_last`` *in
    place* (the values are unchanged, so the original prior keeps working) and every
    4-D tensor input to the same layout; outputs are returned contiguous.
    """

    def __init__(self, network: torch.nn.Module, compile: bool, channels_last: bool, mode: str | None, backend: Any):
        super().__init__()
        self.network = network
        self.channels_last = bool(channels_last)
        self.fallback_reason: str | None = None
        if self.channels_last:
            network.to(memory_format=torch.channels_last)
        compiled = None
        if compile:
            try:
                compiled = torch.compile(network, mode=mode, backend=backend)
            except Exception as err:  # torch.compile refuses this Python or platform
                self._fall_back(err)
        object.__setattr__(self, "_compiled", compiled)

    @property
    def compiled(self) -> bool:
        """Whether calls still go to the compiled network."""
        return self._compiled is not None

    def _fall_back(self, err: BaseException) -> None:
        self.fallback_reason = _reason(err)
        object.__setattr__(self, "_compiled", None)
        warnings.warn(
            f"torch.compile is unavailable here ({self.fallback_reason}); the network runs uncompiled "
            "(eager), which gives the same results, only slower",
            RuntimeWarning,
            stacklevel=3,
        )

    def _layout(self, value: Any) -> Any:
        if self.channels_last and isinstance(value, Tensor) and value.ndim == 4:
            return value.contiguous(memory_format=torch.channels_last)
        return value

    def _output(self, value: Any) -> Any:
        if not self.channels_last:
            return value
        if isinstance(value, Tensor):
            return value.contiguous()
        if isinstance(value, (tuple, list)):
            return type(value)(self._output(item) for item in value)
        return value

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        args = tuple(self._layout(a) for a in args)
        kwargs = {key: self._layout(value) for key, value in kwargs.items()}
        if self._compiled is not None:
            try:
                return self._output(self._compiled(*args, **kwargs))
            except Exception as err:
                out = self.network(*args, **kwargs)  # a real error of the network raises here
                self._fall_back(err)
                return self._output(out)
        return self._output(self.network(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["network"], name)


class CompiledPrior(PriorWrapper):
    """A prior whose denoising network runs compiled (``torch.compile``) and / or channels-last.

    ``denoise`` is the inner prior's, unchanged: the wrapper replaces only the network
    it calls (the ``unet`` of a diffusers or ADM prior, or of a latent prior's
    denoiser) by a :class:`FastNetwork`, in a shallow copy of the prior, so the original
    object is left as it was (apart from the channels-last weight layout).  Precision
    is the network's own (``load_prior(..., dtype=torch.bfloat16)``); ``solve()`` keeps
    the sampler state in float32 (:func:`invsolve.api.working_dtype`).

    ``compile`` turns on ``torch.compile(network, mode=mode, backend=backend)``
    (``mode="reduce-overhead"`` adds CUDA graphs on a GPU).  The first call of each
    input shape and grad mode compiles (tens of seconds on a CPU); later calls are fast.
    Where compilation is unavailable a warning says so and the network runs eagerly
    (:attr:`status` tells which happened).  ``channels_last`` stores weights and inputs
    in the NHWC layout, which convolution kernels on GPUs (tensor cores, with float16 /
    bfloat16) and oneDNN on CPUs often run faster.  Wrap before tiling:
    ``Tiled(CompiledPrior(prior))``.  A latent prior gives a :class:`CompiledLatent`.
    """

    def __new__(cls, prior: Any, *args: Any, **kwargs: Any) -> CompiledPrior:
        if cls is CompiledPrior and is_latent_prior(prior):
            cls = CompiledLatent
        return super().__new__(cls)

    def __init__(
        self,
        prior: Any,
        compile: bool = True,
        channels_last: bool = False,
        mode: str | None = None,
        backend: Any = "inductor",
    ):
        if not is_prior(prior):
            raise TypeError(f"{type(prior).__name__} is not a prior: CompiledPrior wraps a prior with denoise(x, sigma)")
        path = _network_path(prior)
        self.prior = _with_network(prior, path, lambda net: FastNetwork(net, compile, channels_last, mode, backend))
        self.network: FastNetwork = _get(self.prior, path)
        self.sigma_min = prior.sigma_min
        self.sigma_max = prior.sigma_max
        self.data_shape = getattr(prior, "data_shape", None)
        self.compile, self.channels_last, self.mode = bool(compile), bool(channels_last), mode

    @property
    def status(self) -> str:
        """``"compiled"``, ``"eager"`` (not asked for) or ``"eager (compile unavailable: ...)"``."""
        if self.network.fallback_reason is not None:
            return f"eager (compile unavailable: {self.network.fallback_reason})"
        return "compiled" if self.network.compiled else "eager"

    def options(self) -> dict[str, Any]:
        """What was asked for and what runs, for reports."""
        return {"compile": self.compile, "channels_last": self.channels_last, "mode": self.mode, "status": self.status}

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.prior.denoise(x, sigma)

    def __repr__(self) -> str:
        return f"CompiledPrior({self.prior!r}, {self.status}, channels_last={self.channels_last})"


class CompiledLatent(LatentPriorWrapper, CompiledPrior):
    """:class:`CompiledPrior` around a latent prior: the latent denoiser's network is
    compiled; ``encode``, ``decode``, ``latent_shape`` and prompts are the inner prior's."""


def accelerated(prior: Any, compile: bool = False, channels_last: bool = False, mode: str | None = None) -> Any:
    """``prior`` itself when neither option is on, else ``CompiledPrior(prior, compile, channels_last, mode)``:
    the one call the command-line ``--compile`` / ``--channels-last`` flags need."""
    if not compile and not channels_last:
        return prior
    return CompiledPrior(prior, compile=compile, channels_last=channels_last, mode=mode)


def load_accelerated(
    name_or_path: Any,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    compile: bool = False,
    channels_last: bool = False,
    mode: str | None = None,
    **kwargs: Any,
) -> Any:
    """``accelerated(load_prior(name_or_path, device, dtype, **kwargs), compile, channels_last, mode)``:
    the one way the command line and the benchmarks load a prior with ``--dtype``, ``--compile`` and
    ``--channels-last``.  ``priors.load_prior`` is looked up at call time, so a test may replace it."""
    import priors

    prior = priors.load_prior(name_or_path, device=device, dtype=dtype, **kwargs)
    return accelerated(prior, compile=compile, channels_last=channels_last, mode=mode)


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def _network_path(prior: Any) -> tuple[str, ...]:
    for path in NETWORK_PATHS:
        try:
            if isinstance(_get(prior, path), torch.nn.Module):
                return path
        except AttributeError:
            continue
    raise TypeError(
        f"{type(prior).__name__} has no network CompiledPrior can compile (a torch.nn.Module at "
        f"{' or '.join('.'.join(p) for p in NETWORK_PATHS)}); wrap the diffusers or ADM prior itself, "
        "before Tiled or ClippedPrior"
    )


def _with_network(prior: Any, path: tuple[str, ...], build: Any) -> Any:
    """A shallow copy of ``prior`` (and of every object along ``path``) with the network replaced."""
    head = copy.copy(prior)
    if len(path) == 1:
        setattr(head, path[0], build(getattr(prior, path[0])))
    else:
        setattr(head, path[0], _with_network(getattr(prior, path[0]), path[1:], build))
    return head
