"""Exercises 10-11 (Aranguri et al. 2025, the high-dimensions page): a VP and a VE interpolant,
and the dilated time change that spends half of the steps in the window that matters."""

from __future__ import annotations

import math

import torch

from ..exact.interpolants import DilatedTime, make_interpolant
from .core import Exercise, Fail, call, explain, random_inputs, tensor_like, tolerance

ARANGURI = "Aranguri et al. 2025"


# ------------------------------------------------------------------------------------------------
# 10. VP and VE interpolants
# ------------------------------------------------------------------------------------------------


def reference_interpolant(kind, tau, a, z):
    return make_interpolant(kind, a.shape[-1]).sample(tau, a, z)


def interpolant_mistakes(kind, tau, a, z) -> list:
    d = a.shape[-1]
    c = 1.0 if kind == "vp" else math.sqrt(d)
    out = [("alpha and beta are swapped: tau = 0 is pure noise (alpha(0) = 1), tau = 1 is the data (beta(1) = 1)",
            c * tau * z + (1 - tau) * a)]
    if kind == "ve":
        out += [("VE's noise is scaled by c = sqrt(d), not by d", d * (1 - tau) * z + tau * a),
                ("VE is written as VP: the noise needs the factor c = sqrt(d)", (1 - tau) * z + tau * a),
                ("sqrt(d) multiplies the data; it belongs to the noise: I = sqrt(d) alpha(tau) z + beta(tau) a",
                 (1 - tau) * z + c * tau * a)]
    else:
        out += [("VP has c = 1: the noise is not scaled by sqrt(d) (that is VE)", math.sqrt(d) * (1 - tau) * z + tau * a)]
    return out


def interpolant_checks():
    def shapes(fn):
        for i, (shape, dtype) in enumerate([((4, 10), torch.float32), ((3, 2, 50), torch.float64)]):
            a, z = random_inputs(i, shape, shape, dtype=dtype)
            for kind in ("vp", "ve"):
                tensor_like(call(fn, kind, 0.3, a, z), shape, dtype, f"I_tau of {kind} for shape {shape} ({dtype})")

    def ends(fn):
        a, z = random_inputs(1, (3, 16), (3, 16))
        for kind, c in (("vp", 1.0), ("ve", 4.0)):
            explain(call(fn, kind, 1.0, a, z), a, interpolant_mistakes(kind, 1.0, a, z), f"{kind} at tau = 1 must be the data a")
            explain(call(fn, kind, 0.0, a, z), c * z, interpolant_mistakes(kind, 0.0, a, z),
                    f"{kind} at tau = 0 must be the noise c z with c = {c:g} (d = 16)")

    def variance(fn):
        g = torch.Generator().manual_seed(2)
        for d in (4, 400):
            z = torch.randn(2000, d, generator=g, dtype=torch.float64)
            a = torch.zeros(2000, d, dtype=torch.float64)
            for kind, want in (("vp", 1.0), ("ve", float(d))):
                var = call(fn, kind, 0.0, a, z).var().item()
                if abs(var / want - 1) > 0.05:
                    raise Fail(f"{kind} at tau = 0 in d = {d} has per-coordinate variance {var:.3g}, not {want:g}: "
                               "VP keeps the noise at variance 1, VE blows it up to d (c = sqrt(d))")

    def linear_path(fn):
        a, z = random_inputs(3, (5, 9), (5, 9))
        for kind in ("vp", "ve"):
            explain(call(fn, kind, 0.3, a, z), reference_interpolant(kind, 0.3, a, z), interpolant_mistakes(kind, 0.3, a, z),
                    f"{kind} at tau = 0.3 must be c (1 - tau) z + tau a (the linear path alpha = 1 - tau, beta = tau)")

    def oracle(fn):
        for i, (shape, dtype) in enumerate([((4, 2), torch.float32), ((3, 1000), torch.float64), ((2, 3, 7), torch.float32)]):
            a, z = random_inputs(10 + i, shape, shape, dtype=dtype)
            for kind in ("vp", "ve"):
                for tau in (0.0, 0.01, 0.5, 0.97, 1.0):
                    explain(call(fn, kind, tau, a, z), reference_interpolant(kind, tau, a, z),
                            interpolant_mistakes(kind, tau, a, z),
                            f"{kind} at tau = {tau}, shape {shape}, {dtype}: differs from minidiff.exact.interpolants.make_interpolant",
                            *tolerance(dtype))

    return [("shape and dtype kept", shapes), ("tau = 0 is the noise c z, tau = 1 the data", ends),
            ("VP noise has variance 1, VE noise variance d", variance), ("the linear path at tau = 0.3", linear_path),
            ("agrees with minidiff on random inputs", oracle)]


# ------------------------------------------------------------------------------------------------
# 11. The dilated time change
# ------------------------------------------------------------------------------------------------


def reference_dilated_time(t, kind, d, kappa=3.0):
    return DilatedTime(kind, d, kappa)(t)


def _two_piece(t, knot):
    return torch.where(t <= 0.5, 2 * knot * t, knot + (1 - knot) * (2 * t - 1))


def dilated_mistakes(t, kind, d, kappa) -> list:
    r = kappa / math.sqrt(d)
    knot = r if kind == "vp" else 1 - r
    r_d = kappa / d
    return [
        ("the window is r = kappa / sqrt(d), not kappa / d", _two_piece(t, r_d if kind == "vp" else 1 - r_d)),
        ("VP and VE are swapped: VP spends half of the steps next to the noise end (tau < r), VE next to the data "
         "end (tau > 1 - r)", _two_piece(t, 1 - r if kind == "vp" else r)),
        ("the first half must reach the knot at t = 1/2: its slope is 2 * knot, not knot",
         torch.where(t <= 0.5, knot * t, knot + (1 - knot) * (2 * t - 1))),
        ("tau(t) = t is the uniform schedule: the dilated one bends at t = 1/2, where tau = knot", t.clone()),
    ]


def dilated_checks():
    t = torch.linspace(0, 1, 41, dtype=torch.float64)

    def shapes(fn):
        for dtype in (torch.float64, torch.float32):
            tensor_like(call(fn, t.to(dtype), "vp", 1e4), t.shape, dtype, f"tau(t) for a {dtype} t")

    def ends(fn):
        for kind in ("vp", "ve"):
            got = call(fn, t, kind, 1e4)
            if abs(got[0].item()) > 1e-12 or abs(got[-1].item() - 1) > 1e-12:
                raise Fail(f"{kind}: tau(0) = {got[0].item():.4g} and tau(1) = {got[-1].item():.4g}; a time change maps 0 to 0 "
                           "(noise) and 1 to 1 (data)")

    def knot(fn):
        half = torch.tensor([0.5], dtype=torch.float64)
        for kind, d in (("vp", 1e4), ("ve", 1e4), ("vp", 1e6)):
            want = 3 / math.sqrt(d) if kind == "vp" else 1 - 3 / math.sqrt(d)
            explain(call(fn, half, kind, d), torch.tensor([want], dtype=torch.float64),
                    [(h, w[20:21]) for h, w in dilated_mistakes(t, kind, d, 3.0)],
                    f"{kind}, d = {d:g}: tau(1/2) must be {'r' if kind == 'vp' else '1 - r'} = {want:.6g} with r = kappa / sqrt(d)")

    def pieces(fn):
        for kind in ("vp", "ve"):
            got = call(fn, t, kind, 1e4)
            explain(got, reference_dilated_time(t, kind, 1e4), dilated_mistakes(t, kind, 1e4, 3.0),
                    f"{kind}: tau must be linear from (0, 0) to (1/2, knot) and from (1/2, knot) to (1, 1)")
            if (got.diff() < -1e-12).any():
                raise Fail(f"{kind}: tau decreases somewhere; a time change is non-decreasing")

    def oracle(fn):
        g = torch.Generator().manual_seed(0)
        for d in (100.0, 1e4, 1e8):
            for kappa in (3.0, 1.0):
                for dtype in (torch.float64, torch.float32):
                    ts = torch.rand(17, generator=g, dtype=torch.float64).to(dtype)
                    for kind in ("vp", "ve"):
                        explain(call(fn, ts, kind, d, kappa), reference_dilated_time(ts, kind, d, kappa),
                                dilated_mistakes(ts.double(), kind, d, kappa),
                                f"{kind}, d = {d:g}, kappa = {kappa}, {dtype}: differs from minidiff.exact.interpolants.DilatedTime",
                                *tolerance(dtype))

    return [("shape and dtype of t", shapes), ("tau(0) = 0 and tau(1) = 1", ends),
            ("the knot: tau(1/2) = r (VP) or 1 - r (VE), r = kappa / sqrt(d)", knot),
            ("two straight pieces with the kink at t = 1/2", pieces), ("agrees with minidiff on random t", oracle)]


EXERCISES = [
    Exercise(10, "interpolants", "VP and VE stochastic interpolants", ARANGURI, "highdim.md", "interpolant",
             "def interpolant(kind, tau, a, z):",
             "The stochastic interpolant I_tau = c alpha(tau) z + beta(tau) a on the linear path\n"
             "alpha = 1 - tau, beta = tau (Aranguri et al. Sec. 2): tau = 0 is noise, tau = 1 is data.\n\n"
             "kind \"vp\": c = 1 (variance preserving); \"ve\": c = sqrt(d) (variance exploding), with d the\n"
             "data dimension a.shape[-1]. a, z: data and noise of one shape [..., d]; tau: a float in [0, 1].\n"
             "Returns I_tau with a's shape and dtype.",
             reference_interpolant, "minidiff.exact.interpolants.Interpolant.sample (make_interpolant)", interpolant_checks()),
    Exercise(11, "dilated-time", "The dilated time change of Aranguri et al.", ARANGURI, "highdim.md", "dilated_time",
             "def dilated_time(t, kind, d, kappa=3.0):",
             "The paper's dilated schedule tau(t) on the uniform clock t in [0, 1] (a tensor), linear path.\n\n"
             "r = kappa / sqrt(d), the width of the window where the sampler decides what matters.\n"
             "tau is piecewise linear through (0, 0), (1/2, knot) and (1, 1), with knot = r for \"vp\" (half of\n"
             "the steps next to the noise end, where VP picks the mode) and knot = 1 - r for \"ve\" (half\n"
             "next to the data end, where VE sets the shape inside a mode). Returns tau with t's shape and dtype.",
             reference_dilated_time, "minidiff.exact.interpolants.dilated_time and DilatedTime", dilated_checks()),
]
