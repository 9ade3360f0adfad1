#!/usr/bin/env python3
"""Lane-level emulation of kernels/attention_train.cu's index math (no GPU, no numpy).

Emulates ldmatrix (.x4, optionally .trans) and mma.m16n8k16 from their PTX ISA definitions,
then runs the kernels' warp programs with their exact address / fragment / mask expressions
(ported line by line) on one sequence and one head, in exact arithmetic (no bf16 rounding), and
compares out, lse, dq, dk, dv with a plain reference. What it validates: tiling, fragment
mappings, masks, tile skipping, online softmax. What it does not: the PTX semantics themselves
(taken from the ISA), cp.async, barriers, races, rounding.

    python3 scripts/attention_train_emu.py
"""
import math
import random

NEG_INF = float("-inf")


# ---- PTX semantics ---------------------------------------------------------------------------

def ldsm_x4(tile, addr, trans=False):
    """tile[row][col]; addr(lane) -> (row, col) of the 8-element row that lane provides.
    Returns regs[lane][m] = (lo, hi)."""
    mats = []
    for m in range(4):
        rows = []
        for r in range(8):
            row, col = addr(8 * m + r)
            rows.append([tile[row][col + c] for c in range(8)])
        mats.append(rows)
    regs = []
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        if trans:
            regs.append([(mats[m][2 * t][g], mats[m][2 * t + 1][g]) for m in range(4)])
        else:
            regs.append([(mats[m][g][2 * t], mats[m][g][2 * t + 1]) for m in range(4)])
    return regs


def mma(c, a, b0, b1):
    """c[lane][4] += A (a[lane][4] pairs) x B (b0/b1[lane] pairs), m16n8k16 layouts."""
    A = [[0.0] * 16 for _ in range(16)]
    B = [[0.0] * 8 for _ in range(16)]
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for reg, (r, k) in enumerate([(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)]):
            A[r][k], A[r][k + 1] = a[lane][reg]
        B[2 * t][g], B[2 * t + 1][g] = b0[lane]
        B[2 * t + 8][g], B[2 * t + 9][g] = b1[lane]
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for e, (r, n) in enumerate([(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)]):
            c[lane][e] += sum(A[r][k] * B[k][n] for k in range(16))


def quad_reduce(vals, op):
    out = list(vals)
    for x in (1, 2):
        out = [op(out[l], out[l ^ x]) for l in range(32)]
    return out


def zeros(n):
    return [[[0.0] * 4 for _ in range(32)] for _ in range(n)]


def col(regs, i):
    return [r[i] for r in regs]


# ---- the kernels' masks ----------------------------------------------------------------------

class SeqMask:
    def __init__(self, causal, window, p, c):
        self.causal, self.window, self.p, self.pc = causal, window, p, (p + c if (p or c) else 0)

    def visible(self, i, j):
        if not self.causal:
            return True
        if j > i:
            return False
        if self.window and i - j >= self.window:
            return False
        if self.pc and self.p <= j < self.pc and i >= self.pc:
            return False
        return True

    def tile_hidden(self, q0, q1, k0, k1):
        if not self.causal:
            return False
        if k0 > q1 - 1:
            return True
        if self.window and q0 - (k1 - 1) >= self.window:
            return True
        if self.pc and k0 >= self.p and k1 <= self.pc and q0 >= self.pc:
            return True
        return False

    def tile_partial(self, q0, q1, k0, k1):
        if not self.causal:
            return False
        if k1 - 1 > q0:
            return True
        if self.window and (q1 - 1) - k0 >= self.window:
            return True
        if self.pc and k0 < self.pc and k1 > self.p and q1 > self.pc:
            return True
        return False


def ref_visible(mask, i, j):  # stic::backend::cpu::AttnMask::visible
    kind, w, p, c = mask
    if kind == "bidir":
        return True
    if kind == "causal":
        return j <= i and (w is None or i - j < w)
    return j <= i and (j < p or i < p + c or j >= p + c)


def stage(x, r0, rows, valid, D):
    """Rows [r0, r0 + rows) of x (a list of D-vectors), zero past `valid`."""
    return [list(x[r0 + r]) if r < valid else [0.0] * D for r in range(rows)]


# ---- forward ---------------------------------------------------------------------------------

def fwd(q, k, v, D, mask, scale, BM=64, BN=64):
    L = len(q)
    out = [[None] * D for _ in range(L)]
    lse = [None] * L
    ntiles = (L + BM - 1) // BM
    for qt in range(ntiles):
        q0, q1 = qt * BM, min(qt * BM + BM, L)
        kbeg, kend = 0, L
        if mask.causal:
            kend = q1
            if mask.window:
                kbeg = max(0, q0 - mask.window + 1)
        kbeg = (kbeg // BN) * BN

        def next_tile(k0):
            while k0 < kend and mask.tile_hidden(q0, q1, k0, min(k0 + BN, L)):
                k0 += BN
            return k0

        Qs = stage(q, q0, BM, q1 - q0, D)
        for warp in range(4):
            o = zeros(D // 8)
            m0 = [NEG_INF] * 32
            m1 = [NEG_INF] * 32
            l0 = [0.0] * 32
            l1 = [0.0] * 32
            kt = next_tile(kbeg)
            while kt < kend:
                Kb = stage(k, kt, BN, min(BN, L - kt), D)
                Vb = stage(v, kt, BN, min(BN, L - kt), D)
                s = zeros(BN // 8)
                for kk in range(D // 16):
                    a = ldsm_x4(Qs, lambda lane: (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, kk * 16 + (lane >> 4) * 8))
                    for np_ in range(BN // 16):
                        bb = ldsm_x4(Kb, lambda lane: (np_ * 16 + (lane & 7) + (lane >> 4) * 8, kk * 16 + ((lane >> 3) & 1) * 8))
                        mma(s[2 * np_], a, col(bb, 0), col(bb, 1))
                        mma(s[2 * np_ + 1], a, col(bb, 2), col(bb, 3))
                need = kt + BN > L or mask.tile_partial(q0, q1, kt, min(kt + BN, L))
                for lane in range(32):
                    g, t = lane >> 2, lane & 3
                    r0 = q0 + warp * 16 + g
                    r1 = r0 + 8
                    for nt in range(BN // 8):
                        for e in range(4):
                            x = s[nt][lane][e] * scale
                            if need:
                                j = kt + nt * 8 + 2 * t + (e & 1)
                                i = r0 if e < 2 else r1
                                if j >= L or not mask.visible(i, j):
                                    x = NEG_INF
                            s[nt][lane][e] = x
                mx0 = [max([m0[l]] + [s[nt][l][e] for nt in range(BN // 8) for e in (0, 1)]) for l in range(32)]
                mx1 = [max([m1[l]] + [s[nt][l][e] for nt in range(BN // 8) for e in (2, 3)]) for l in range(32)]
                mx0 = quad_reduce(mx0, max)
                mx1 = quad_reduce(mx1, max)
                for l in range(32):
                    u0 = 0.0 if mx0[l] == NEG_INF else mx0[l]
                    u1 = 0.0 if mx1[l] == NEG_INF else mx1[l]
                    al0, al1 = math.exp(m0[l] - u0), math.exp(m1[l] - u1)
                    m0[l], m1[l] = mx0[l], mx1[l]
                    ps0 = ps1 = 0.0
                    for nt in range(BN // 8):
                        s[nt][l] = [math.exp(s[nt][l][0] - u0), math.exp(s[nt][l][1] - u0), math.exp(s[nt][l][2] - u1), math.exp(s[nt][l][3] - u1)]
                        ps0 += s[nt][l][0] + s[nt][l][1]
                        ps1 += s[nt][l][2] + s[nt][l][3]
                    l0[l] = l0[l] * al0 + ps0
                    l1[l] = l1[l] * al1 + ps1
                    for i in range(D // 8):
                        o[i][l] = [o[i][l][0] * al0, o[i][l][1] * al0, o[i][l][2] * al1, o[i][l][3] * al1]
                for kc in range(BN // 16):
                    pa = [[(s[2 * kc][l][0], s[2 * kc][l][1]), (s[2 * kc][l][2], s[2 * kc][l][3]),
                           (s[2 * kc + 1][l][0], s[2 * kc + 1][l][1]), (s[2 * kc + 1][l][2], s[2 * kc + 1][l][3])] for l in range(32)]
                    for dp in range(D // 16):
                        bb = ldsm_x4(Vb, lambda lane: (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 16 + (lane >> 4) * 8), trans=True)
                        mma(o[2 * dp], pa, col(bb, 0), col(bb, 1))
                        mma(o[2 * dp + 1], pa, col(bb, 2), col(bb, 3))
                kt = next_tile(kt + BN)
            l0 = quad_reduce(l0, lambda a, b: a + b)
            l1 = quad_reduce(l1, lambda a, b: a + b)
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                for half in (0, 1):
                    r = q0 + warp * 16 + g + 8 * half
                    if r >= L:
                        continue
                    l = l1[lane] if half else l0[lane]
                    m = m1[lane] if half else m0[lane]
                    for dt in range(D // 8):
                        c = dt * 8 + 2 * t
                        out[r][c] = o[dt][lane][2 * half] / l
                        out[r][c + 1] = o[dt][lane][2 * half + 1] / l
                    if t == 0:
                        lse[r] = m + math.log(l)
    return out, lse


# ---- backward --------------------------------------------------------------------------------

def bwd(q, k, v, dout, lse, delta, D, mask, scale, BQ=32, BN=64):
    L = len(q)
    RB = BQ // 16
    WPR = 4 // RB
    DW = D // WPR
    LDS_ROWS = BQ
    dq = [[0.0] * D for _ in range(L)]
    dk = [[None] * D for _ in range(L)]
    dv = [[None] * D for _ in range(L)]
    ntiles = (L + BN - 1) // BN
    for kti in range(ntiles):
        k0, k1 = kti * BN, min(kti * BN + BN, L)
        qbeg, qend = 0, L
        if mask.causal:
            qbeg = (k0 // BQ) * BQ
            if mask.window:
                qend = min(L, k1 - 1 + mask.window)
        Ks = stage(k, k0, BN, k1 - k0, D)
        Vs = stage(v, k0, BN, k1 - k0, D)
        dkf = [zeros(D // 8) for _ in range(4)]
        dvf = [zeros(D // 8) for _ in range(4)]
        for q0 in range(qbeg, qend, BQ):
            q1 = min(q0 + BQ, L)
            if mask.tile_hidden(q0, q1, k0, k1):
                continue
            Qs = stage(q, q0, BQ, q1 - q0, D)
            dOs = stage(dout, q0, BQ, q1 - q0, D)
            lse_s = [lse[q0 + r] if q0 + r < L else 0.0 for r in range(BQ)]
            dl_s = [delta[q0 + r] if q0 + r < L else 0.0 for r in range(BQ)]
            dSs = [[None] * (BN + 8) for _ in range(LDS_ROWS)]
            need = q1 - q0 < BQ or k1 - k0 < BN or mask.tile_partial(q0, q1, k0, k1)
            for warp in range(4):
                st = zeros(BQ // 8)
                for kk in range(D // 16):
                    a = ldsm_x4(Ks, lambda lane: (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, kk * 16 + (lane >> 4) * 8))
                    for np_ in range(BQ // 16):
                        bb = ldsm_x4(Qs, lambda lane: (np_ * 16 + (lane & 7) + (lane >> 4) * 8, kk * 16 + ((lane >> 3) & 1) * 8))
                        mma(st[2 * np_], a, col(bb, 0), col(bb, 1))
                        mma(st[2 * np_ + 1], a, col(bb, 2), col(bb, 3))
                for lane in range(32):
                    g, t = lane >> 2, lane & 3
                    kr0 = k0 + warp * 16 + g
                    kr1 = kr0 + 8
                    for nt in range(BQ // 8):
                        for e in range(4):
                            qc = nt * 8 + 2 * t + (e & 1)
                            p = math.exp(st[nt][lane][e] * scale - lse_s[qc])
                            if need:
                                i, j = q0 + qc, (kr0 if e < 2 else kr1)
                                if i >= L or j >= L or not mask.visible(i, j):
                                    p = 0.0
                            st[nt][lane][e] = p
                dpt = zeros(BQ // 8)
                for kk in range(D // 16):
                    a = ldsm_x4(Vs, lambda lane: (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, kk * 16 + (lane >> 4) * 8))
                    for np_ in range(BQ // 16):
                        bb = ldsm_x4(dOs, lambda lane: (np_ * 16 + (lane & 7) + (lane >> 4) * 8, kk * 16 + ((lane >> 3) & 1) * 8))
                        mma(dpt[2 * np_], a, col(bb, 0), col(bb, 1))
                        mma(dpt[2 * np_ + 1], a, col(bb, 2), col(bb, 3))
                for kc in range(BQ // 16):
                    pa = [[(st[2 * kc][l][0], st[2 * kc][l][1]), (st[2 * kc][l][2], st[2 * kc][l][3]),
                           (st[2 * kc + 1][l][0], st[2 * kc + 1][l][1]), (st[2 * kc + 1][l][2], st[2 * kc + 1][l][3])] for l in range(32)]
                    for dp in range(D // 16):
                        bb = ldsm_x4(dOs, lambda lane: (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 16 + (lane >> 4) * 8), trans=True)
                        mma(dvf[warp][2 * dp], pa, col(bb, 0), col(bb, 1))
                        mma(dvf[warp][2 * dp + 1], pa, col(bb, 2), col(bb, 3))
                for lane in range(32):
                    g, t = lane >> 2, lane & 3
                    kl0 = warp * 16 + g
                    kl1 = kl0 + 8
                    for nt in range(BQ // 8):
                        for e in range(4):
                            qc = nt * 8 + 2 * t + (e & 1)
                            dpt[nt][lane][e] = st[nt][lane][e] * (dpt[nt][lane][e] - dl_s[qc])
                        qc = nt * 8 + 2 * t
                        dSs[qc][kl0] = dpt[nt][lane][0]
                        dSs[qc + 1][kl0] = dpt[nt][lane][1]
                        dSs[qc][kl1] = dpt[nt][lane][2]
                        dSs[qc + 1][kl1] = dpt[nt][lane][3]
                for kc in range(BQ // 16):
                    pa = [[(dpt[2 * kc][l][0], dpt[2 * kc][l][1]), (dpt[2 * kc][l][2], dpt[2 * kc][l][3]),
                           (dpt[2 * kc + 1][l][0], dpt[2 * kc + 1][l][1]), (dpt[2 * kc + 1][l][2], dpt[2 * kc + 1][l][3])] for l in range(32)]
                    for dp in range(D // 16):
                        bb = ldsm_x4(Qs, lambda lane: (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 16 + (lane >> 4) * 8), trans=True)
                        mma(dkf[warp][2 * dp], pa, col(bb, 0), col(bb, 1))
                        mma(dkf[warp][2 * dp + 1], pa, col(bb, 2), col(bb, 3))
            # barrier: dS complete
            for warp in range(4):
                rb, c0 = warp % RB, (warp // RB) * DW
                a = [ldsm_x4(dSs, lambda lane: (rb * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, kc * 16 + (lane >> 4) * 8)) for kc in range(BN // 16)]
                for dp in range(DW // 16):
                    acc = zeros(2)
                    for kc in range(BN // 16):
                        bb = ldsm_x4(Ks, lambda lane: (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, c0 + dp * 16 + (lane >> 4) * 8), trans=True)
                        mma(acc[0], a[kc], col(bb, 0), col(bb, 1))
                        mma(acc[1], a[kc], col(bb, 2), col(bb, 3))
                    for lane in range(32):
                        g, t = lane >> 2, lane & 3
                        qr0 = q0 + rb * 16 + g
                        qr1 = qr0 + 8
                        for j in range(2):
                            c = c0 + dp * 16 + j * 8 + 2 * t
                            if qr0 < L:
                                dq[qr0][c] += acc[j][lane][0] * scale
                                dq[qr0][c + 1] += acc[j][lane][1] * scale
                            if qr1 < L:
                                dq[qr1][c] += acc[j][lane][2] * scale
                                dq[qr1][c + 1] += acc[j][lane][3] * scale
        for warp in range(4):
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                for half in (0, 1):
                    r = k0 + warp * 16 + g + 8 * half
                    if r >= L:
                        continue
                    for dt in range(D // 8):
                        c = dt * 8 + 2 * t
                        dk[r][c] = dkf[warp][dt][lane][2 * half] * scale
                        dk[r][c + 1] = dkf[warp][dt][lane][2 * half + 1] * scale
                        dv[r][c] = dvf[warp][dt][lane][2 * half]
                        dv[r][c + 1] = dvf[warp][dt][lane][2 * half + 1]
    return dq, dk, dv


# ---- reference and driver --------------------------------------------------------------------

def reference(q, k, v, dout, mask, scale):
    L, D = len(q), len(q[0])
    P, out, lse = [], [], []
    for i in range(L):
        s = [sum(q[i][c] * k[j][c] for c in range(D)) * scale if ref_visible(mask, i, j) else NEG_INF for j in range(L)]
        m = max(s)
        e = [math.exp(x - m) for x in s]
        z = sum(e)
        p = [x / z for x in e]
        P.append(p)
        out.append([sum(p[j] * v[j][c] for j in range(L)) for c in range(D)])
        lse.append(m + math.log(z))
    dq = [[0.0] * D for _ in range(L)]
    dk = [[0.0] * D for _ in range(L)]
    dv = [[0.0] * D for _ in range(L)]
    delta = []
    for i in range(L):
        dp = [sum(dout[i][c] * v[j][c] for c in range(D)) for j in range(L)]
        dl = sum(P[i][j] * dp[j] for j in range(L))
        delta.append(dl)
        for j in range(L):
            if P[i][j] == 0.0:
                continue
            ds = P[i][j] * (dp[j] - dl) * scale
            for c in range(D):
                dq[i][c] += ds * k[j][c]
                dk[j][c] += ds * q[i][c]
                dv[j][c] += P[i][j] * dout[i][c]
    return out, lse, delta, dq, dk, dv


def maxdiff(a, b):
    worst = 0.0
    for ra, rb in zip(a, b):
        for x, y in zip(ra if isinstance(ra, list) else [ra], rb if isinstance(rb, list) else [rb]):
            if x is None:
                return float("inf")
            worst = max(worst, abs(x - y))
    return worst


def main():
    rnd = random.Random(1)
    cases = [
        (70, 64, ("bidir", None, 0, 0)),
        (70, 64, ("causal", None, 0, 0)),
        (130, 64, ("causal", 20, 0, 0)),
        (140, 64, ("sp", None, 30, 75)),
        (17, 128, ("causal", None, 0, 0)),
        (1, 64, ("causal", None, 0, 0)),
        (33, 128, ("sp", None, 5, 9)),
        (200, 64, ("sp", None, 10, 130)),  # key tile [64, 128) hidden from query tile [192, 200)
        (200, 64, ("causal", 5, 0, 0)),
    ]
    ok = True
    for L, D, mk in cases:
        kind, w, p, c = mk
        mask = SeqMask(kind != "bidir", w or 0, p if kind == "sp" else 0, c if kind == "sp" else 0)
        scale = 1.0 / math.sqrt(D)
        rv = lambda: [[rnd.uniform(-1.5, 1.5) for _ in range(D)] for _ in range(L)]
        q, k, v, dout = rv(), rv(), rv(), rv()
        out_r, lse_r, delta_r, dq_r, dk_r, dv_r = reference(q, k, v, dout, mk, scale)
        out, lse = fwd(q, k, v, D, mask, scale)
        delta = [sum(a * b for a, b in zip(out[i], dout[i])) for i in range(L)]
        dq, dk, dv = bwd(q, k, v, dout, lse, delta, D, mask, scale)
        errs = [maxdiff(out, out_r), maxdiff(lse, lse_r), maxdiff(dq, dq_r), maxdiff(dk, dk_r), maxdiff(dv, dv_r)]
        good = all(e < 1e-9 for e in errs)
        ok &= good
        print(f"L={L} D={D} {mk}: out {errs[0]:.1e} lse {errs[1]:.1e} dq {errs[2]:.1e} dk {errs[3]:.1e} dv {errs[4]:.1e} {'ok' if good else 'FAIL'}")
    print("all ok" if ok else "FAILURES")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
