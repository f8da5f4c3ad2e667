"""The reverse-time SDE through torchsde (Li et al. 2020), with Itô methods euler, milstein, srk.

torchsde integrates forward in time, so the reverse SDE dx = [f - g^2 score] dt + g dw̄ (Song et al.
2021, arXiv:2011.13456, Eq. 6), walked from ts[0] down to ts[-1], is handed to it in s = -t:

    dy = -[f(y, -s) - g(-s)^2 score(y, -s)] ds + g(-s) dW_s,   y(s) = x(-s),

an Itô SDE with diagonal noise (g is the same on every coordinate). The data (B, *D) is flattened to
(B, prod D) for torchsde. `srk` (Rößler's strong order 1.5 scheme, Itô, diagonal noise) needs the
space-time Lévy area, which the Brownian interval then provides. g does not depend on x, so
Milstein's correction vanishes and `milstein` gives the same samples as `euler` (tested).

Grid: each interval of ts is exactly one solver step (`step`: one `sdeint` call per interval, all
sharing the one Brownian path that `init` builds over the whole grid), so non-uniform grids are
walked as given and a hook applies at every grid time. Randomness: a torchsde BrownianInterval
seeded with an integer drawn from `generator`; with a list of per-sample generators, one Brownian
interval per sample, each seeded from its own generator, so that a sample does not depend on its
batch. With generator=None the path is seeded from fresh entropy.

NFE: torchsde evaluates the drift again at points it has just evaluated (its input check, and
SRK's stage loop); the drift wrapper reuses the value for the same state tensor object within one
step, so the NFE counts distinct evaluations: 1 per step for euler and milstein, 4 for srk.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .base import Hook, Solver, State
from .protocol import CountedModel, GeneratorArg, reverse_drift, time_like
from .validate import check_name

if TYPE_CHECKING:
    import torchsde

METHOD_NFE: dict[str, int] = {"euler": 1, "milstein": 1, "srk": 4}


def import_torchsde():
    """torchsde, imported on first use: every other solver works where it is not installed."""
    try:
        import torchsde
    except ImportError as err:
        raise ImportError(
            "solver 'torchsde' needs the torchsde package (pip install 'torchsde>=0.2.6'); "
            "every other solver works without it"
        ) from err
    return torchsde


class ReverseSDE:
    """The reverse-time SDE in s = -t for torchsde: f(s, y), g(s, y) on flattened y (B, prod D)."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, model: CountedModel, shape: tuple[int, ...]):
        self.model = model
        self.shape = shape  # (B, *D)
        self.memo: dict[int, tuple[Tensor, Tensor]] = {}  # id(y) -> (y, drift); cleared every step

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        hit = self.memo.get(id(y))
        if hit is not None and hit[0] is y:
            return hit[1]
        x = y.reshape(self.shape)
        t = time_like(-s, x)
        # Song et al. 2021, Eq. (6) with ds = -dt: the drift changes sign, the noise does not
        drift = -reverse_drift(self.model.sde, x, t, self.model.score(x, t)).flatten(1)
        self.memo[id(y)] = (y, drift)
        return drift

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        g = self.model.sde.g(time_like(-s, y))
        return g[:, None].expand_as(y)


class PerSampleBrownian:
    """One torchsde BrownianInterval of shape (1, d) per sample, queried together as (B, d).

    It has the interface torchsde.sdeint reads from a Brownian motion (call, shape, dtype, device,
    levy_area_approximation) without subclassing torchsde.BaseBrownian, so that importing this
    module does not import torchsde.
    """

    __slots__ = ("intervals",)

    def __init__(self, intervals: list[torchsde.BrownianInterval]):
        self.intervals = intervals

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        parts = [bm(ta, tb, return_U=return_U, return_A=return_A) for bm in self.intervals]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(p, dim=0) for p in zip(*parts))
        return torch.cat(parts, dim=0)

    def __repr__(self) -> str:
        return f"PerSampleBrownian({len(self.intervals)} x {self.intervals[0]!r})"

    @property
    def dtype(self):
        return self.intervals[0].dtype

    @property
    def device(self):
        return self.intervals[0].device

    @property
    def shape(self):
        return torch.Size((len(self.intervals), *self.intervals[0].shape[1:]))

    @property
    def levy_area_approximation(self):
        return self.intervals[0].levy_area_approximation


def _entropy(generator: torch.Generator | None) -> int | None:
    """An integer seed drawn from generator (None: fresh entropy); one host sync per call."""
    if generator is None:
        return None
    return int(torch.randint(2**62, (1,), generator=generator, device=generator.device))


def brownian(
    s: Tensor, y: Tensor, levy_area: str, generator: GeneratorArg
) -> torchsde.BaseBrownian | PerSampleBrownian:
    """A Brownian path on [s[0], s[-1]] for the flattened state y (B, d), seeded from generator."""
    torchsde = import_torchsde()
    common = {"t0": s[0], "t1": s[-1], "dtype": y.dtype, "device": y.device, "levy_area_approximation": levy_area}
    if generator is None or isinstance(generator, torch.Generator):
        return torchsde.BrownianInterval(size=tuple(y.shape), entropy=_entropy(generator), **common)
    gens = list(generator)
    if len(gens) != y.shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {y.shape[0]}; pass one per sample")
    return PerSampleBrownian(
        [torchsde.BrownianInterval(size=(1, y.shape[1]), entropy=_entropy(g), **common) for g in gens]
    )


@dataclass(frozen=True)
class TorchSDEState(State):
    """The state x (B, *D) with what the run fixes once: the reverse SDE for torchsde (`ReverseSDE`), the
    Brownian path `bm` over the whole grid in s = -t, and the step cap `dt` (longer than every interval)."""

    sde: ReverseSDE | None = None
    bm: object = None
    dt: Tensor | None = None


@dataclass(frozen=True, kw_only=True)
class TorchSDE(Solver):
    """Reverse-time SDE through torchsde.sdeint, one fixed step per grid interval.

    Options: method in ("euler", "milstein", "srk"), `denoise_final`. `nfe_per_step` on an instance is
    the method's (METHOD_NFE); `order` is the weak order 1 of Euler–Maruyama and Milstein (SRK's
    strong order 1.5 does not show on this additive-noise problem's weak error beyond the score's
    accuracy).
    """

    name = "torchsde"
    description = "reverse-time SDE via torchsde.sdeint (euler, milstein, srk)"
    order = 1
    stochastic = True
    nfe_per_step = 1
    default_steps = 1000
    default_grid = "uniform_t"

    method: str = "euler"

    def __post_init__(self):
        super().__post_init__()
        import_torchsde()  # fail here, not after the grid is built
        check_name("method", self.method, sorted(METHOD_NFE))
        self._set(nfe_per_step=METHOD_NFE[self.method])

    def init(self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg) -> TorchSDEState:
        s = (-ts).to(dtype=x.dtype, device=x.device)  # increasing
        levy_area = "space-time" if self.method == "srk" else "none"
        bm = brownian(s, x.flatten(1), levy_area, generator)
        dt = 2 * (s[-1] - s[0])  # longer than every interval: torchsde clamps the step to the interval's end
        return TorchSDEState(x=x, sde=ReverseSDE(model, tuple(x.shape)), bm=bm, dt=dt)

    def step(
        self, model: CountedModel, state: TorchSDEState, s: Tensor, t: Tensor, *, generator: GeneratorArg, hook: Hook
    ) -> TorchSDEState:
        torchsde = import_torchsde()
        x = state.x
        interval = torch.stack([-s, -t]).to(dtype=x.dtype, device=x.device)  # [s, t] in torchsde's time -t
        state.sde.memo.clear()
        # Song et al. 2021, Eq. (6) in -t: one step of `method` on the shared Brownian path
        y = torchsde.sdeint(state.sde, x.flatten(1), interval, bm=state.bm, method=self.method, dt=state.dt)[-1]
        return replace(state, x=y.reshape(x.shape))
