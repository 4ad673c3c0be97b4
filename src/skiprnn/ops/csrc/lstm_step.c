/* Fused per-step work of the Skip LSTM's CPU path (skiprnn/ops/cpu_rnn.py, cell "lstm").
 *
 * One call does what the Python loop does with ~15 aten ops per step around its GEMM (W_hh h
 * forward, W_hh^T dgates backward: BLAS's, or the threads' own rows_gemm). The buffers and their
 * layouts are cpu_rnn.py's (feature-major: every per-step block is (rows, B), rows contiguous),
 * so the chunk flushes and the chunk GEMMs around the loop are unchanged. Compiled twice by
 * skiprnn/ops/cpu_kernels.py: REAL = float (suffix _f32) and, with SKIPRNN_DOUBLE, REAL = double
 * (suffix _f64).
 *
 * Forward step j of a chunk (time step t), after A[j] += W_hh h:
 *   [o; i; f] = sigmoid(A[j][:3H]), g = tanh(A[j][3H:])          (in place, as the Python loop)
 *   c' = f c + i g, tanh(c') -> WTC[j], h' = o tanh(c')            -> CAND[j] = [h'; c']
 *   u~ = min(cum + du, 1) (= cum on padded steps), u = [u~ > tau]
 *   state' = u ? CAND[j] : ST[j]                                  -> ST[j + 1]
 *   du' = max(sigmoid(w_p . c' + b_p), floor)
 *   WSC rows [cum, u~, du, 0, du', u]; next [cum, du] = u ? [0, du'] : [u~, du]
 *
 * Threads: with one thread a chunk runs the steps above as written, its per-step GEMMs through
 * BLAS. With more (torch's thread count, at least 16 units each) every step is split by hidden
 * units (see "Threads" below): each thread makes its rows of W_hh h and of W_hh^T dgates itself
 * (rows_gemm; BLAS gains little from a second core at these sizes), one barrier per step.
 * (Splitting the batch's columns instead measured no faster than one thread: rows of B floats
 * interleave the threads' columns.)
 *
 * Backward step (running gradient s = [dh; dc; d du; d cum] of the state after step t; sn gets
 * that of the state before it); KK[t] holds the forward's coefficients (cpu_rnn.KKLayout):
 *   du~ = KK[t][:S + 2] . s + g_gate[t]  (times m on padded steps), dz = d du * kz
 *   updated step: dh' = u dh, dc' = u dc + dh' KH + w_p dz; dgates = [dh' KO; dc' K3] -> DGP
 *                 sn_h = go + (1 - u) dh (the caller adds W_hh^T dgates), sn_c = (1 - u) dc + dc' f
 *   held step (no column of the batch updates): dgates = 0, sn_h = dh + go, sn_c = dc
 *   sn[d du] = d du (1 - u) + du~ pu, sn[d cum] = d cum (1 - m) + du~ pu
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* inside a parallel region: nt, the number of its threads, and k, this thread's */
#ifdef _OPENMP
#define THREAD_IDS(nt, k) const int64_t nt = omp_get_num_threads(), k = omp_get_thread_num()
#else
#define THREAD_IDS(nt, k) const int64_t nt = 1, k = 0
#endif

/* glibc's libmvec has vector exp / tanh; math.h declares them only under -ffast-math, whose
 * reciprocal approximation turns 1 / (1 + inf) into NaN (a sigmoid of -100). Declared here, the
 * loops vectorise with IEEE arithmetic (no -ffast-math). */
extern float expf(float) __attribute__((__simd__("notinbranch")));
extern float tanhf(float) __attribute__((__simd__("notinbranch")));
extern double exp(double) __attribute__((__simd__("notinbranch")));
extern double tanh(double) __attribute__((__simd__("notinbranch")));

#ifdef SKIPRNN_DOUBLE
#define REAL double
#define SUF(name) name##_f64
#define EXP exp
#define TANH tanh
#else
#define REAL float
#define SUF(name) name##_f32
#define EXP expf
#define TANH tanhf
#endif

/* BLAS gemm, Fortran interface (column-major; torch's own MKL exports sgemm_ / dgemm_) */
typedef void (*SUF(gemm_fn))(const char *, const char *, const int *, const int *, const int *,
                             const REAL *, const REAL *, const int *, const REAL *, const int *,
                             const REAL *, REAL *, const int *);

typedef struct {
    int64_t H, B;
    REAL *A;          /* (C, 4H, B) gate pre-activations, rows [o, i, f, g] */
    REAL *ST;         /* (C + 1, 2H, B) state [h; c] before each step */
    REAL *CAND;       /* (C, 2H, B) candidate [h'; c'] */
    REAL *WTC;        /* (C, H, B) tanh(c') */
    REAL *WSC;        /* (C + 1, 6, B) gate rows */
    const REAL *thr;  /* threshold of step t, column b: thr[t * thr_t + b * thr_b] */
    int64_t thr_t, thr_b;
    const REAL *mask; /* (T, B) 0/1, or NULL */
    const REAL *gw;   /* (H) w_p */
    double gb;        /* b_p */
    double floor;     /* Delta u~ floor (max_skip); used when has_floor */
    int64_t has_floor;
    REAL *scratch;    /* (threads (14 + I) B) (fwd_chunk's layout) */
    REAL *Hh;         /* (T, B, H) h after every step */
    REAL *SC;         /* (T, 6, B) every step's WSC rows */
    REAL *KK;         /* (T, W, B) the backward's coefficients, or NULL (no training) */
    REAL *CC;         /* (T, H, B) c', the feature the gate read (with KK) */
    int64_t W, CO, KZ, U, C2, PU, M;   /* cpu_rnn.KKLayout rows (S = 2H) */
    const REAL *Wh;   /* (4H, H) W_hh, internal gate order */
    void *gemm;       /* SUF(gemm_fn) */
    int64_t threads;  /* the most threads a chunk may use */
    const REAL *x;    /* (T, B, I) the input, or NULL: A holds the chunk's projection already */
    const REAL *Wi;   /* (4H, I) W_ih, internal gate order (with x) */
    const REAL *bias; /* (4H) b_ih + b_hh, or NULL (with x) */
    int64_t I;
} SUF(lstm_fwd_args);

static inline REAL SUF(sig)(REAL a) { return (REAL)1 / ((REAL)1 + EXP(-a)); }

/* v[0..n) = tanh(v[0..n)) with the vector tanh throughout: the n % VL tail goes through a padded
 * block, not VL scalar calls (which cost more than the vector part at n = 110) */
#define VL 16
static inline void SUF(tanh_inplace)(REAL *restrict v, int64_t n)
{
    const int64_t body = n - n % VL;
#pragma omp simd
    for (int64_t j = 0; j < body; j++) v[j] = TANH(v[j]);
    if (body < n) {
        REAL tail[VL] = {0};
        memcpy(tail, v + body, (size_t)(n - body) * sizeof(REAL));
#pragma omp simd
        for (int64_t j = 0; j < VL; j++) tail[j] = TANH(tail[j]);
        memcpy(v + body, tail, (size_t)(n - body) * sizeof(REAL));
    }
}

/* Y[r][b] += sum_k Wm[r][k] X[k][b] for rows r < R and columns b < B (row strides ldy, ldw, ldx):
 * a block of rows of the per-step products in the feature-major layout, W_hh h (R rows of
 * W_hh) and W_hh^T dgates (R columns of W_hh), for one thread's units. With AVX-512 (float): 4
 * rows x 64 columns of accumulators in registers, one broadcast of Wm per row and k. */
#if defined(__AVX512F__) && !defined(SKIPRNN_DOUBLE)
#include <immintrin.h>
/* 4 rows x 4 vectors of 16 columns: named accumulators, not an array (GCC 12 stores an array
 * of vectors back to the stack on every k). `whole` (a constant at each call, inlined): the 64
 * columns are all there, unmasked loads (a masked load costs an extra vector-port uop, which the
 * FMAs need); else masks m[0..3] (a zero mask leaves its vector out). */
#define LD(p, v) (whole ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m[v], p))
#define ST(p, v, a) (whole ? _mm512_storeu_ps(p, a) : _mm512_mask_storeu_ps(p, m[v], a))
static inline __attribute__((always_inline)) void
rows_gemm_4x64_body(int64_t K, const float *Wm, int64_t ldw, const float *X, int64_t ldx, float *Y,
                    int64_t ldy, const __mmask16 *m, const int whole)
{
    float *y0 = Y, *y1 = Y + ldy, *y2 = Y + 2 * ldy, *y3 = Y + 3 * ldy;
    __m512 a00 = LD(y0, 0), a01 = LD(y0 + 16, 1), a02 = LD(y0 + 32, 2), a03 = LD(y0 + 48, 3);
    __m512 a10 = LD(y1, 0), a11 = LD(y1 + 16, 1), a12 = LD(y1 + 32, 2), a13 = LD(y1 + 48, 3);
    __m512 a20 = LD(y2, 0), a21 = LD(y2 + 16, 1), a22 = LD(y2 + 32, 2), a23 = LD(y2 + 48, 3);
    __m512 a30 = LD(y3, 0), a31 = LD(y3 + 16, 1), a32 = LD(y3 + 32, 2), a33 = LD(y3 + 48, 3);
    const float *w0 = Wm, *w1 = Wm + ldw, *w2 = Wm + 2 * ldw, *w3 = Wm + 3 * ldw;
    for (int64_t k = 0; k < K; k++) {
        const float *xk = X + k * ldx;
        const __m512 x0 = LD(xk, 0), x1 = LD(xk + 16, 1), x2 = LD(xk + 32, 2), x3 = LD(xk + 48, 3);
        const __m512 w0v = _mm512_set1_ps(w0[k]), w1v = _mm512_set1_ps(w1[k]);
        const __m512 w2v = _mm512_set1_ps(w2[k]), w3v = _mm512_set1_ps(w3[k]);
        a00 = _mm512_fmadd_ps(w0v, x0, a00);
        a01 = _mm512_fmadd_ps(w0v, x1, a01);
        a02 = _mm512_fmadd_ps(w0v, x2, a02);
        a03 = _mm512_fmadd_ps(w0v, x3, a03);
        a10 = _mm512_fmadd_ps(w1v, x0, a10);
        a11 = _mm512_fmadd_ps(w1v, x1, a11);
        a12 = _mm512_fmadd_ps(w1v, x2, a12);
        a13 = _mm512_fmadd_ps(w1v, x3, a13);
        a20 = _mm512_fmadd_ps(w2v, x0, a20);
        a21 = _mm512_fmadd_ps(w2v, x1, a21);
        a22 = _mm512_fmadd_ps(w2v, x2, a22);
        a23 = _mm512_fmadd_ps(w2v, x3, a23);
        a30 = _mm512_fmadd_ps(w3v, x0, a30);
        a31 = _mm512_fmadd_ps(w3v, x1, a31);
        a32 = _mm512_fmadd_ps(w3v, x2, a32);
        a33 = _mm512_fmadd_ps(w3v, x3, a33);
    }
    ST(y0, 0, a00), ST(y0 + 16, 1, a01), ST(y0 + 32, 2, a02), ST(y0 + 48, 3, a03);
    ST(y1, 0, a10), ST(y1 + 16, 1, a11), ST(y1 + 32, 2, a12), ST(y1 + 48, 3, a13);
    ST(y2, 0, a20), ST(y2 + 16, 1, a21), ST(y2 + 32, 2, a22), ST(y2 + 48, 3, a23);
    ST(y3, 0, a30), ST(y3 + 16, 1, a31), ST(y3 + 32, 2, a32), ST(y3 + 48, 3, a33);
}

static void rows_gemm_4x64(int64_t K, const float *Wm, int64_t ldw, const float *X, int64_t ldx,
                           float *Y, int64_t ldy)
{
    rows_gemm_4x64_body(K, Wm, ldw, X, ldx, Y, ldy, NULL, 1);
}

static void rows_gemm_4x64_masked(int64_t K, const float *Wm, int64_t ldw, const float *X,
                                  int64_t ldx, float *Y, int64_t ldy, const __mmask16 *m)
{
    rows_gemm_4x64_body(K, Wm, ldw, X, ldx, Y, ldy, m, 0);
}
#undef LD
#undef ST
#define LD(p, m) _mm512_maskz_loadu_ps(m, p)
#define ST(p, m, a) _mm512_mask_storeu_ps(p, m, a)

/* one row x 4 vectors (the rows after the last block of 4) */
static void rows_gemm_1x64(int64_t K, const float *Wm, const float *X, int64_t ldx, float *Y,
                           const __mmask16 *m)
{
    const __mmask16 m0 = m[0], m1 = m[1], m2 = m[2], m3 = m[3];
    __m512 a0 = LD(Y, m0), a1 = LD(Y + 16, m1), a2 = LD(Y + 32, m2), a3 = LD(Y + 48, m3);
    for (int64_t k = 0; k < K; k++) {
        const float *xk = X + k * ldx;
        const __m512 w = _mm512_set1_ps(Wm[k]);
        a0 = _mm512_fmadd_ps(w, LD(xk, m0), a0);
        a1 = _mm512_fmadd_ps(w, LD(xk + 16, m1), a1);
        a2 = _mm512_fmadd_ps(w, LD(xk + 32, m2), a2);
        a3 = _mm512_fmadd_ps(w, LD(xk + 48, m3), a3);
    }
    ST(Y, m0, a0), ST(Y + 16, m1, a1), ST(Y + 32, m2, a2), ST(Y + 48, m3, a3);
}
#undef LD
#undef ST

void rows_gemm_f32(int64_t R, int64_t B, int64_t K, const float *Wm, int64_t ldw, const float *X,
                   int64_t ldx, float *Y, int64_t ldy)
{
    /* K in blocks whose rows of X (up to 64 columns) stay in L1 while every row passes */
    enum { KB = 128 };
    for (int64_t k0 = 0; k0 < K; k0 += KB) {
        const int64_t kn = K - k0 < KB ? K - k0 : KB;
        for (int64_t c0 = 0; c0 < B; c0 += 64) {
            __mmask16 m[4];
            for (int v = 0; v < 4; v++) {
                const int64_t left = B - c0 - 16 * v;
                m[v] = left >= 16 ? (__mmask16)0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
            }
            const float *w = Wm + k0, *x = X + k0 * ldx + c0;
            float *y = Y + c0;
            const int whole = B - c0 >= 64;
            int64_t r = 0;
            for (; r + 4 <= R; r += 4)
                if (whole)
                    rows_gemm_4x64(kn, w + r * ldw, ldw, x, ldx, y + r * ldy, ldy);
                else
                    rows_gemm_4x64_masked(kn, w + r * ldw, ldw, x, ldx, y + r * ldy, ldy, m);
            for (; r < R; r++)
                rows_gemm_1x64(kn, w + r * ldw, x, ldx, y + r * ldy, m);
        }
    }
}
#else
void SUF(rows_gemm)(int64_t R, int64_t B, int64_t K, const REAL *Wm, int64_t ldw, const REAL *X,
                    int64_t ldx, REAL *Y, int64_t ldy)
{
    for (int64_t r = 0; r < R; r++) {
        REAL *restrict y = Y + r * ldy;
        for (int64_t k = 0; k < K; k++) {
            const REAL w = Wm[r * ldw + k];
            const REAL *restrict x = X + k * ldx;
#pragma omp simd
            for (int64_t b = 0; b < B; b++) y[b] += w * x[b];
        }
    }
}
#endif

/* every column b of a (rows, B) block */
#define COLS for (int64_t b = 0; b < B; b++)

/* ---- Threads. A chunk call may split each step over threads by hidden units: thread k of nt
 * owns units [r0, r1) (bounds at multiples of 4, but the last's end at H: whole blocks of
 * rows_gemm), i.e. those rows of each gate,
 * of the state and of the coefficients, and makes their part of the per-step product itself
 * (its rows of W_hh h forward, its columns of W_hh^T dgates backward). What sums over all units
 * (w_p . c' forward, du~ backward) is summed per thread, then, after one barrier per step, the
 * partial sums are added in thread order by every thread, each keeping its own copy of the
 * per-column gate values (so that no thread reads what another writes in the same step; thread
 * 0 writes the shared copies). Partial sums alternate between two sets by step parity: a thread
 * may start the next step's while another still reads these. With one thread this is the
 * single-threaded loop, operation for operation. Scratch: the partial sums (2 nt B reals), then
 * per thread forward 12 B (its copy of the gate's columns, 4 B, and 8 B of rows) and I B (x_t
 * transposed, where the chunk projects the input itself), backward 4 B. */
int64_t SUF(chunk_threads)(int64_t wanted, int64_t H, int64_t B)
{
    /* at least 16 units a thread, and B H >= 4096 (as the waves kernel's split): below that a
     * step's work is too small for a barrier (B = 16, H = 128, two threads: 76 -> 85 ms per
     * call; B = 64, H = 64: faster) */
    if (B * H < 4096)
        return 1;
    const int64_t most = H / 16;
    return wanted < most ? (wanted > 1 ? wanted : 1) : (most > 1 ? most : 1);
}

static inline void SUF(unit_range)(int64_t H, int64_t k, int64_t nt, int64_t *r0, int64_t *r1)
{
    *r0 = k == 0 ? 0 : (H * k / nt + 2) / 4 * 4;
    *r1 = k == nt - 1 ? H : (H * (k + 1) / nt + 2) / 4 * 4;
}

/* dst[0..n) = src[0..n): with AVX-512 and both 64-byte aligned, n a multiple of 16, by streaming
 * stores (the backward's coefficients are read again only after the whole forward, far outside
 * the caches: writing them around the caches saves reading each line first) */
static inline void SUF(stream_row)(REAL *restrict dst, const REAL *restrict src, int64_t n)
{
#if defined(__AVX512F__) && !defined(SKIPRNN_DOUBLE)
    if (((uintptr_t)dst & 63) == 0 && n % 16 == 0) {
        for (int64_t b = 0; b < n; b += 16) _mm512_stream_ps(dst + b, _mm512_loadu_ps(src + b));
        return;
    }
#endif
    memcpy(dst, src, (size_t)n * sizeof(REAL));
}

/* KK[t] (cpu_rnn.KKLayout, the LSTM's rows, see skip_lstm/cpu.py) and CC[t] of step j: the rows
 * of units [r0, r1); tmp: 8 B scratch */
static void SUF(lstm_coefficient_rows)(const SUF(lstm_fwd_args) *p, int64_t j, int64_t t,
                                       int64_t r0, int64_t r1, REAL *restrict tmp)
{
    const int64_t H = p->H, B = p->B, HB = H * B;
    const REAL *restrict a = p->A + j * 4 * HB;
    const REAL *restrict st = p->ST + j * 2 * HB;
    const REAL *restrict cand = p->CAND + j * 2 * HB;
    const REAL *restrict tc = p->WTC + j * HB;
    REAL *restrict kk = p->KK + t * p->W * B;
    REAL *restrict cc = p->CC + t * HB;
    const REAL *restrict o = a, *restrict i = a + HB, *restrict f = a + 2 * HB, *restrict g = a + 3 * HB;
    const REAL *restrict c = st + HB, *restrict hp = cand;
    REAL *restrict k3 = kk + p->CO * B;
    for (int64_t half = 0; half < 2; half++)
        for (int64_t r = half * H + r0; r < half * H + r1; r++) {
#pragma omp simd
            COLS tmp[b] = cand[r * B + b] - st[r * B + b];
            SUF(stream_row)(kk + r * B, tmp, B);
        }
    for (int64_t r = r0; r < r1; r++) {
        const int64_t q = r * B;
#pragma omp simd
        COLS {
            const int64_t k = q + b;
            REAL ik = i[k], fk = f[k], gk = g[k], ok = o[k];
            tmp[b] = gk * (ik - ik * ik);
            tmp[B + b] = c[k] * (fk - fk * fk);
            tmp[2 * B + b] = ik - ik * (gk * gk);
            tmp[3 * B + b] = hp[k] - hp[k] * ok;
            tmp[4 * B + b] = ok - hp[k] * tc[k];
            tmp[5 * B + b] = fk;
        }
        for (int64_t e = 0; e < 6; e++) SUF(stream_row)(k3 + e * HB + q, tmp + e * B, B);
        SUF(stream_row)(cc + q, cand + HB + q, B);
    }
}

/* KK[t]'s per-column rows (from step j's gate rows WSC[j]) */
static void SUF(lstm_coefficient_cols)(const SUF(lstm_fwd_args) *p, int64_t j, int64_t t)
{
    const int64_t B = p->B, S = 2 * p->H;
    const REAL *restrict w = p->WSC + j * 6 * B;
    REAL *restrict kk = p->KK + t * p->W * B;
    const REAL *m = p->mask ? p->mask + t * B : 0;
    COLS {
        REAL cum = w[b], ut = w[B + b], up = w[2 * B + b], dl = w[4 * B + b], u = w[5 * B + b];
        REAL kz = (dl - dl * dl) * u;
        if (p->has_floor && !(dl > (REAL)p->floor)) kz = 0;
        kk[S * B + b] = dl - up;
        kk[(S + 1) * B + b] = ((REAL)1 - u) - ut;
        kk[p->KZ * B + b] = kz;
        kk[p->U * B + b] = u;
        kk[p->C2 * B + b] = (REAL)1 - u;
        kk[(p->C2 + 1) * B + b] = m ? (REAL)1 - m[b] : (REAL)0;
        kk[p->PU * B + b] = up <= (REAL)1 - cum ? (REAL)1 : (REAL)0;
        kk[p->M * B + b] = m ? m[b] : (REAL)1;
    }
}

/* The update gate of step j before the cell, from the thread's copy loc = [cum; du; u~; u] (rows
 * of B): u~ = min(cum + du, 1) (cum on padded steps), u = [u~ > tau]; write: WSC[j]'s rows too */
static void SUF(fwd_gate_before)(const SUF(lstm_fwd_args) *p, int64_t j, int64_t t,
                                 REAL *restrict loc, int write)
{
    const int64_t B = p->B;
    REAL *restrict w = p->WSC + j * 6 * B;
    const REAL *thr = p->thr + t * p->thr_t;
    const REAL *m = p->mask ? p->mask + t * B : 0;
    COLS {
        REAL cum = loc[b], ut = cum + loc[B + b];
        ut = ut < (REAL)1 ? ut : (REAL)1;
        if (m && m[b] == 0) ut = cum;
        loc[2 * B + b] = ut;
        loc[3 * B + b] = ut > thr[b * p->thr_b] ? (REAL)1 : (REAL)0;
    }
    if (write)
        COLS w[B + b] = loc[2 * B + b], w[5 * B + b] = loc[3 * B + b];
}

/* Units [r0, r1) of step j (after their rows of A[j] += W_hh h): the cell, the state select by u
 * into ST[j + 1], the partial sum z of w_p . c' over the units (from b_p when first) and, in
 * training, their coefficient rows. */
static void SUF(fwd_rows)(const SUF(lstm_fwd_args) *p, int64_t j, int64_t t, int64_t r0,
                          int64_t r1, const REAL *restrict u, REAL *restrict z, int first,
                          REAL *restrict tmp)
{
    const int64_t H = p->H, B = p->B, HB = H * B;
    REAL *restrict a = p->A + j * 4 * HB;
    const REAL *restrict st = p->ST + j * 2 * HB;
    REAL *restrict stn = p->ST + (j + 1) * 2 * HB;
    REAL *restrict cand = p->CAND + j * 2 * HB;
    REAL *restrict tc = p->WTC + j * HB;

    for (int64_t e = 0; e < 3; e++)
        for (int64_t r = e * H + r0; r < e * H + r1; r++) {
            REAL *restrict ar = a + r * B;
#pragma omp simd
            COLS ar[b] = SUF(sig)(ar[b]);
        }
    for (int64_t r = 3 * H + r0; r < 3 * H + r1; r++) {
        REAL *restrict ar = a + r * B;
#pragma omp simd
        COLS ar[b] = TANH(ar[b]);
    }
    const REAL *restrict o = a, *restrict i = a + HB, *restrict f = a + 2 * HB, *restrict g = a + 3 * HB;
    const REAL *restrict c = st + HB;
    REAL *restrict hp = cand, *restrict cp = cand + HB;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t q = r * B;
#pragma omp simd
        COLS {
            const int64_t k = q + b;
            REAL cn = f[k] * c[k] + i[k] * g[k];
            REAL th = TANH(cn);
            cp[k] = cn;
            tc[k] = th;
            hp[k] = o[k] * th;
        }
    }
    for (int64_t half = 0; half < 2; half++)
        for (int64_t r = half * H + r0; r < half * H + r1; r++) {
            const REAL *restrict x0 = st + r * B, *restrict x1 = cand + r * B;
            REAL *restrict y = stn + r * B;
#pragma omp simd
            COLS y[b] = u[b] != 0 ? x1[b] : x0[b];
        }
    COLS z[b] = first ? (REAL)p->gb : (REAL)0;
    for (int64_t r = r0; r < r1; r++) {
        const REAL wr = p->gw[r];
        const REAL *restrict x = cp + r * B;
#pragma omp simd
        COLS z[b] += wr * x[b];
    }
    if (p->KK) SUF(lstm_coefficient_rows)(p, j, t, r0, r1, tmp);
}

/* The gate after the cell: du' = max(sigmoid(z), floor), z the nt partial sums added in thread
 * order; the next step's (cum, du) into loc; write: WSC[j], WSC[j + 1], SC[t] and KK[t]'s
 * per-column rows */
static void SUF(fwd_gate_after)(const SUF(lstm_fwd_args) *p, int64_t j, int64_t t,
                                REAL *restrict loc, const REAL *restrict part, int64_t nt,
                                int write)
{
    const int64_t B = p->B;
    REAL *restrict w = p->WSC + j * 6 * B;
    REAL *restrict wn = p->WSC + (j + 1) * 6 * B;
    COLS {
        REAL z = part[b];
        for (int64_t k = 1; k < nt; k++) z += part[k * B + b];
        REAL dl = SUF(sig)(z);
        if (p->has_floor && dl < (REAL)p->floor) dl = (REAL)p->floor;
        const REAL ut = loc[2 * B + b], up = loc[B + b], u = loc[3 * B + b];
        loc[b] = u != 0 ? (REAL)0 : ut;
        loc[B + b] = u != 0 ? dl : up;
        if (write) {
            w[4 * B + b] = dl;
            wn[b] = loc[b];
            wn[2 * B + b] = loc[B + b];
            wn[3 * B + b] = 0;
        }
    }
    if (!write)
        return;
    REAL *restrict sc = p->SC + t * 6 * B;
    for (int64_t r = 0; r < 6; r++) COLS sc[r * B + b] = w[r * B + b];
    if (p->KK) SUF(lstm_coefficient_cols)(p, j, t);
}

/* Hh[t] (time-major) of columns [b0, b1) from ST[j + 1] */
static void SUF(fwd_store_h)(const SUF(lstm_fwd_args) *p, int64_t j, int64_t t, int64_t b0,
                             int64_t b1)
{
    const int64_t H = p->H, B = p->B;
    const REAL *restrict stn = p->ST + (j + 1) * 2 * H * B;
    REAL *restrict hh = p->Hh + t * H * B;
    for (int64_t b = b0; b < b1; b++)
        for (int64_t r = 0; r < H; r++) hh[b * H + r] = stn[r * B + b];
}

/* One step j (time t), after A[j] += W_hh h (the caller's GEMM), one thread. */
void SUF(lstm_fwd_step)(const SUF(lstm_fwd_args) *p, int64_t j, int64_t t)
{
    const int64_t B = p->B;
    REAL *part = p->scratch, *loc = p->scratch + 2 * B;
    const REAL *w = p->WSC + j * 6 * B;
    COLS loc[b] = w[b], loc[B + b] = w[2 * B + b];
    SUF(fwd_gate_before)(p, j, t, loc, 1);
    SUF(fwd_rows)(p, j, t, 0, p->H, loc + 3 * B, part, 1, loc + 4 * B);
    SUF(fwd_gate_after)(p, j, t, loc, part, 1, 1);
    SUF(fwd_store_h)(p, j, t, 0, B);
#if defined(__AVX512F__) && !defined(SKIPRNN_DOUBLE)
    _mm_sfence();   /* the streaming stores of the coefficients */
#endif
}

/* Thread k of nt's share of a forward chunk (see lstm_fwd_chunk); blas: the per-step product
 * through BLAS (one thread, called outside any parallel region) */
static void SUF(fwd_chunk_thread)(const SUF(lstm_fwd_args) *p, int64_t t0, int64_t n, int64_t nt,
                                  int64_t k, int blas)
{
    SUF(gemm_fn) gemm = (SUF(gemm_fn))p->gemm;
    const int64_t H = p->H, B = p->B, HB = H * B;
    const int m = (int)B, nn = (int)(4 * H), kh = (int)H;
    const REAL one = 1;
    int64_t r0, r1;
    SUF(unit_range)(H, k, nt, &r0, &r1);
    const int64_t b0 = B * k / nt, b1 = B * (k + 1) / nt;
    REAL *loc = p->scratch + 2 * nt * B + 12 * k * B;
    REAL *xt = p->scratch + 14 * nt * B + k * p->I * B;   /* (I, B) */
    const REAL *w0 = p->WSC;
    COLS loc[b] = w0[b], loc[B + b] = w0[2 * B + b];
    for (int64_t j = 0; j < n; j++) {
        const REAL *h = p->ST + j * 2 * HB;
        REAL *a = p->A + j * 4 * HB;
        if (p->x) {   /* this thread's rows of each gate: A[j] = b + W_ih x_t */
            const REAL *xr = p->x + (t0 + j) * B * p->I;
            for (int64_t i = 0; i < p->I; i++) COLS xt[i * B + b] = xr[b * p->I + i];
            for (int64_t e = 0; e < 4; e++)
                for (int64_t q = e * H + r0; q < e * H + r1; q++) {
                    const REAL bq = p->bias ? p->bias[q] : (REAL)0;
                    COLS a[q * B + b] = bq;
                }
            for (int64_t e = 0; e < 4; e++)
                SUF(rows_gemm)(r1 - r0, B, p->I, p->Wi + (e * H + r0) * p->I, p->I, xt, B,
                               a + (e * H + r0) * B, B);
        }
        if (blas) /* column-major: A[j]^T (B x 4H) += h^T (B x H) W_hh^T (H x 4H) */
            gemm("N", "N", &m, &nn, &kh, &one, h, &m, p->Wh, &kh, &one, a, &m);
        else
            for (int64_t e = 0; e < 4; e++)   /* this thread's rows of each gate */
                SUF(rows_gemm)(r1 - r0, B, H, p->Wh + (e * H + r0) * H, H, h, B,
                               a + (e * H + r0) * B, B);
        SUF(fwd_gate_before)(p, j, t0 + j, loc, k == 0);
        REAL *part = p->scratch + (j & 1) * nt * B;
        SUF(fwd_rows)(p, j, t0 + j, r0, r1, loc + 3 * B, part + k * B, k == 0, loc + 4 * B);
        if (nt > 1) {
#pragma omp barrier
        }
        SUF(fwd_gate_after)(p, j, t0 + j, loc, part, nt, k == 0);
        SUF(fwd_store_h)(p, j, t0 + j, b0, b1);
    }
#if defined(__AVX512F__) && !defined(SKIPRNN_DOUBLE)
    _mm_sfence();   /* the streaming stores of the coefficients */
#endif
    /* the carry, this thread's units: ST[n] into ST[0] (other threads may still read ST[n]
     * here, in their last fwd_store_h; ST[0] nobody reads after the first step's barrier) */
    for (int64_t half = 0; half < 2; half++)
        memcpy(p->ST + (half * H + r0) * B, p->ST + n * 2 * HB + (half * H + r0) * B,
               (size_t)((r1 - r0) * B) * sizeof(REAL));
    if (k == 0) {
        const REAL *wl = p->WSC + n * 6 * B;
        REAL *wf = p->WSC;
        COLS wf[b] = wl[b], wf[2 * B + b] = wl[2 * B + b];
    }
}

/* Steps t0 .. t0 + n - 1 (chunk rows 0 .. n - 1): per step A[j] += W_hh h, then the step; over
 * chunk_threads(threads, H, B) threads (see above). Where x is given, each thread first writes
 * its rows of A[j] = W_ih x_t + b itself. Ends with the carry: ST[n] and WSC[n]'s (cum, du) rows
 * become row 0 for the next chunk. One thread runs outside any parallel region, its products
 * through BLAS (inside a region, even an inactive one, BLAS would start a nested team of its own
 * threads on every call); a region's threads make theirs with rows_gemm. */
void SUF(lstm_fwd_chunk)(const SUF(lstm_fwd_args) *p, int64_t t0, int64_t n)
{
    const int64_t want = SUF(chunk_threads)(p->threads, p->H, p->B);
    if (want <= 1) {
        SUF(fwd_chunk_thread)(p, t0, n, 1, 0, 1);
        return;
    }
#pragma omp parallel num_threads((int)want)
    {
        THREAD_IDS(nt, k);
        SUF(fwd_chunk_thread)(p, t0, n, nt, k, 0);
    }
}

typedef struct {
    int64_t H, B, C, W;       /* W: rows of KK[t] */
    int64_t S, CO, KZ, U, C2, PU, M;   /* cpu_rnn.KKLayout rows */
    const REAL *KK;           /* (T, W, B) */
    const REAL *gg;           /* (T, B) gradient reaching u and u~ directly */
    REAL *S0, *S1;            /* (S + 2, B) running gradients */
    REAL *DGP;                /* (4H, C B): step j's dgates in columns j B .. (j + 1) B */
    const REAL *WGO;          /* (C + 1, H, B) output gradients */
    REAL *DZ;                 /* (T, B) */
    const REAL *gw;           /* (H) w_p */
    REAL *scratch;            /* (6 threads B + 8 H B) (bwd_chunk's layout) */
    REAL *dcp;                /* (H, B) scratch */
    int64_t masked;
    const REAL *WhT;          /* (H, 4H) W_hh transposed */
    void *gemm;               /* SUF(gemm_fn) */
    int64_t threads;          /* the most threads a chunk may use */
    REAL *dW;                 /* (4H, H) dW_hh, or NULL: bwd_chunk adds the chunk's dgates h_old^T */
    const REAL *Hh;           /* (T, B, H) h after every step (with dW) */
    const REAL *h0;           /* (B, H) h before step 0 (with dW) */
} SUF(lstm_bwd_args);

/* Units [r0, r1) of reverse step j: their part of du~'s sum over the state rows (last: with the
 * [d du, d cum] rows, from the thread's copy sl of them), dz = d du kz (into dz; write_dz: DZ[t]
 * too), their dgates rows (in DGP's step j columns and, where dgs is given, contiguous (4H, B)
 * rows in dgs for the threads' products: DGP's rows are C B apart, a multiple of 4 KB that maps
 * every row to the same L1 sets) and rows of the state gradient before the step (the caller adds
 * W_hh^T dgates to sn_h where updated). */
static void SUF(bwd_rows)(const SUF(lstm_bwd_args) *p, int64_t j, int64_t t, int64_t cur,
                          int64_t updated, int64_t r0, int64_t r1, const REAL *restrict sl,
                          REAL *restrict dut, REAL *restrict dz, int last, int write_dz,
                          REAL *restrict dgs)
{
    const int64_t H = p->H, B = p->B, HB = H * B, S = p->S, CB = p->C * B;
    const REAL *restrict s = cur ? p->S1 : p->S0;
    REAL *restrict sn = cur ? p->S0 : p->S1;
    const REAL *restrict kk = p->KK + t * p->W * B;
    const REAL *restrict go = p->WGO + j * HB;

    COLS dut[b] = 0;
    for (int64_t half = 0; half < 2; half++)
        for (int64_t r = half * H + r0; r < half * H + r1; r++) {
            const REAL *restrict x = kk + r * B, *restrict y = s + r * B;
#pragma omp simd
            COLS dut[b] += x[b] * y[b];
        }
    if (last)
        for (int64_t r = 0; r < 2; r++) {
            const REAL *restrict x = kk + (S + r) * B, *restrict y = sl + r * B;
#pragma omp simd
            COLS dut[b] += x[b] * y[b];
        }
    const REAL *kz = kk + p->KZ * B;
#pragma omp simd
    COLS dz[b] = sl[b] * kz[b];
    if (write_dz)
        memcpy(p->DZ + t * B, dz, (size_t)B * sizeof(REAL));
    const REAL *restrict dh = s, *restrict dc = s + HB;
    REAL *restrict snh = sn, *restrict snc = sn + HB;
    REAL *restrict dg = p->DGP + j * B;
    if (updated) {
        const REAL *restrict u = kk + p->U * B, *restrict omu = kk + p->C2 * B;
        const REAL *restrict k3 = kk + p->CO * B;           /* 3H rows */
        const REAL *restrict ko = kk + (p->CO + 3 * H) * B;
        const REAL *restrict kh = kk + (p->CO + 4 * H) * B;
        const REAL *restrict fk = kk + (p->CO + 5 * H) * B;
        REAL *restrict dcp = p->dcp;
        for (int64_t r = r0; r < r1; r++) {
            const REAL wr = p->gw[r];
            const int64_t q = r * B;
            REAL *restrict dgo = dg + r * CB;
#pragma omp simd
            COLS {
                REAL dhp = dh[q + b] * u[b];
                REAL d = dc[q + b] * u[b] + dhp * kh[q + b] + wr * dz[b];
                dcp[q + b] = d;
                dgo[b] = dhp * ko[q + b];
                if (dgs) dgs[q + b] = dgo[b];
                snh[q + b] = go[q + b] + dh[q + b] * omu[b];
                snc[q + b] = dc[q + b] * omu[b] + d * fk[q + b];
            }
        }
        for (int64_t e = 0; e < 3; e++)
            for (int64_t r = r0; r < r1; r++) {
                const REAL *restrict kq = k3 + (e * H + r) * B, *restrict d = dcp + r * B;
                REAL *restrict y = dg + (H + e * H + r) * CB;
#pragma omp simd
                COLS y[b] = d[b] * kq[b];
                if (dgs) memcpy(dgs + (H + e * H + r) * B, y, (size_t)B * sizeof(REAL));
            }
    } else {
        for (int64_t e = 0; e < 4; e++)
            for (int64_t r = e * H + r0; r < e * H + r1; r++) COLS dg[r * CB + b] = 0;
        for (int64_t r = r0; r < r1; r++) {
            const int64_t q = r * B;
#pragma omp simd
            COLS {
                snh[q + b] = dh[q + b] + go[q + b];
                snc[q + b] = dc[q + b];
            }
        }
    }
}

/* After the units of reverse step j: du~ = the nt partial sums added in thread order + g_gate
 * (times m on padded steps), then the [d du, d cum] rows of the state gradient before the step
 * into sl (write: into sn too) */
static void SUF(bwd_gate)(const SUF(lstm_bwd_args) *p, int64_t t, int64_t cur,
                          REAL *restrict sl, const REAL *restrict part, int64_t nt, int write)
{
    const int64_t B = p->B, S = p->S;
    const REAL *restrict kk = p->KK + t * p->W * B;
    const REAL *restrict gg = p->gg + t * B;
    const REAL *km = kk + p->M * B;
    const REAL *c2a = kk + p->C2 * B, *c2b = kk + (p->C2 + 1) * B, *pu = kk + p->PU * B;
    REAL *restrict sn = cur ? p->S0 : p->S1;
    COLS {
        REAL d = part[b];
        for (int64_t k = 1; k < nt; k++) d += part[k * B + b];
        d = d + gg[b];
        if (p->masked) d = d * km[b];
        const REAL dp = d * pu[b];
        const REAL n0 = sl[b] * c2a[b] + dp, n1 = sl[B + b] * c2b[b] + dp;
        sl[b] = n0, sl[B + b] = n1;
        if (write) sn[S * B + b] = n0, sn[(S + 1) * B + b] = n1;
    }
}

/* One reverse step, one thread; the caller adds W_hh^T dgates to sn_h where updated. */
void SUF(lstm_bwd_step)(const SUF(lstm_bwd_args) *p, int64_t j, int64_t t, int64_t cur,
                        int64_t updated)
{
    const int64_t B = p->B, S = p->S;
    REAL *part = p->scratch, *sl = p->scratch + 2 * B;
    const REAL *s = cur ? p->S1 : p->S0;
    memcpy(sl, s + S * B, (size_t)(2 * B) * sizeof(REAL));
    SUF(bwd_rows)(p, j, t, cur, updated, 0, p->H, sl, part, sl + 2 * B, 1, 1, NULL);
    SUF(bwd_gate)(p, t, cur, sl, part, 1, 1);
}

/* Thread k of nt's share of a reverse chunk (see lstm_bwd_chunk); blas: as the forward's */
static void SUF(bwd_chunk_thread)(const SUF(lstm_bwd_args) *p, int64_t t0, int64_t n, int64_t cur,
                                  int64_t nt, int64_t k, int blas)
{
    SUF(gemm_fn) gemm = (SUF(gemm_fn))p->gemm;
    const int64_t B = p->B, H = p->H;
    const int m = (int)B, nn = (int)H, kg = (int)(4 * H), lda = (int)(p->C * B), ldb = (int)(4 * H);
    const REAL one = 1;
    int64_t r0, r1, c = cur;
    SUF(unit_range)(H, k, nt, &r0, &r1);
    REAL *sl = p->scratch + 2 * nt * B + 4 * k * B, *dz = sl + 2 * B;
    /* (2, 4H, B): step j's dgates in set j % 2 (a thread writes the next step's while
     * another may still read these in its product) */
    REAL *dgs2 = blas ? NULL : p->scratch + 6 * nt * B;
    memcpy(sl, (c ? p->S1 : p->S0) + p->S * B, (size_t)(2 * B) * sizeof(REAL));
    for (int64_t j = n - 1; j >= 0; j--) {
        const int64_t t = t0 + j;
        const REAL *u = p->KK + (t * p->W + p->U) * B;
        int64_t updated = 0;
        for (int64_t b = 0; b < B; b++) updated |= u[b] != 0;
        REAL *part = p->scratch + (j & 1) * nt * B;
        REAL *dgs = dgs2 ? dgs2 + (j & 1) * 4 * H * B : NULL;
        SUF(bwd_rows)(p, j, t, c, updated, r0, r1, sl, part + k * B, dz, k == nt - 1, k == 0,
                      dgs);
        if (nt > 1) {
#pragma omp barrier
        }
        SUF(bwd_gate)(p, t, c, sl, part, nt, k == 0);
        REAL *sn = c ? p->S0 : p->S1;
        if (updated && blas) /* column-major: sn_h^T (B x H) += dgates^T (B x 4H) W_hh (4H x H) */
            gemm("N", "N", &m, &nn, &kg, &one, p->DGP + j * B, &lda, p->WhT, &ldb, &one, sn, &m);
        else if (updated)   /* this thread's units */
            SUF(rows_gemm)(r1 - r0, B, 4 * H, p->WhT + r0 * 4 * H, 4 * H, dgs, B,
                           sn + r0 * B, B);
        c = 1 - c;
    }
    if (p->dW)   /* this thread's rows of each gate: dW_hh += dgates h_old^T over the chunk */
        for (int64_t e = 0; e < 4; e++) {
            const int64_t q = e * H + r0, CB = p->C * B;
            const REAL *dg = p->DGP + q * CB;
            REAL *y = p->dW + q * H;
            if (t0 > 0)
                SUF(rows_gemm)(r1 - r0, H, n * B, dg, CB, p->Hh + (t0 - 1) * B * H, H, y, H);
            else {   /* h_old is h0 at step 0 */
                SUF(rows_gemm)(r1 - r0, H, B, dg, CB, p->h0, H, y, H);
                SUF(rows_gemm)(r1 - r0, H, (n - 1) * B, dg + B, CB, p->Hh, H, y, H);
            }
        }
}

/* Steps t0 + n - 1 down to t0 of the reverse loop; cur: which running gradient holds the state
 * gradient after step t0 + n - 1 (0: S0). A step updates if any of its u is 1; then sn_h +=
 * W_hh^T dgates. Over chunk_threads(threads, H, B) threads, one outside any parallel region (see
 * the forward). Returns cur after the chunk. */
int64_t SUF(lstm_bwd_chunk)(const SUF(lstm_bwd_args) *p, int64_t t0, int64_t n, int64_t cur)
{
    const int64_t want = SUF(chunk_threads)(p->threads, p->H, p->B);
    if (want <= 1)
        SUF(bwd_chunk_thread)(p, t0, n, cur, 1, 0, 1);
    else {
#pragma omp parallel num_threads((int)want)
        {
            THREAD_IDS(nt, k);
            SUF(bwd_chunk_thread)(p, t0, n, cur, nt, k, 0);
        }
    }
    return n % 2 ? 1 - cur : cur;
}

/* ------------------------------------------------------------------------------------------
 * Batch size 1, no autograd (skiprnn/ops/skipping.py, NumpyStack): one update of a one-layer
 * Skip LSTM whose input projection is given, and a run of steps made of such updates.
 *
 * W is nn.LSTM's W_hh as it is (gate rows i, f, g, o), the projection xp = W_ih x + b_ih + b_hh in
 * the same order (no per-call copy of either weight). The sum a = W_hh h + xp is then moved, unit
 * by unit, into CellSpec.arrange's layout: (i, f, o, g), the sigma rows halved, so that tanh over
 * all rows gives tanh(a/2) for them and sigma(a) = tanh(a/2)/2 + 1/2 (halving is exact in binary
 * floating point: the same numbers as sums of pre-halved rows).
 *   a = W_hh h + xp;  i, f, o = sigma, g = tanh;  c = f c + i g;  h = o tanh(c)
 *   returns sigmoid(w_p . c + b_p) (the caller floors it for max_skip)
 * W_hh h is the whole cost (W_hh is 4 MB at H = 512): its rows are split statically over the
 * threads, so each core reads the same rows on every update and keeps them in its own L2; each
 * thread reads its rows in the reverse order of the previous update, so the rows it read last,
 * still cached, come first. A W_hh under 1 MB runs on one core from WT, its transposed copy (the
 * caller's, small), as AXPYs over its rows (axpy_gemv): no horizontal sum per row of W_hh, which
 * the dot products pay 4H times.
 */
typedef struct {
    int64_t H, threads, flip;
    const REAL *W;    /* (4H, H) W_hh, nn.LSTM's row order */
    REAL *h, *c;      /* (H) state, updated in place */
    REAL *a;          /* (4H) scratch */
    const REAL *gw;   /* (H) w_p */
    double gb;
    const REAL *WT;   /* (H, single_wt_rows(H)) W_hh transposed, zeros past its 4H columns, or
                         NULL; used with one thread (see lstm_single_update) */
} SUF(single_args);

/* 256-bit vectors for the batch-size-1 update: with 512-bit ones (the -mprefer-vector-width the
 * training loops get) the dot products' reductions and remainders cost more than they save
 * (one core, one update: H = 110 8.7 -> 5.3 us, H = 512 122 -> 117 us) */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SINGLE_VECTORS __attribute__((target("prefer-vector-width=256")))
#else
#define SINGLE_VECTORS
#endif

/* acc[0..3] = rows r .. r+3 of W (row length H) dotted with h */
SINGLE_VECTORS static inline void SUF(dot4)(const REAL *restrict w, const REAL *restrict h, int64_t H, REAL *acc)
{
    const REAL *restrict w1 = w + H, *restrict w2 = w1 + H, *restrict w3 = w2 + H;
    REAL a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+:a0, a1, a2, a3)
    for (int64_t j = 0; j < H; j++) {
        const REAL x = h[j];
        a0 += w[j] * x;
        a1 += w1[j] * x;
        a2 += w2[j] * x;
        a3 += w3[j] * x;
    }
    acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
}

/* Units [u0, u1) of a = W_hh h + xp (4H, nn.LSTM's gate order i, f, g, o) moved in place into
 * CellSpec.arrange's layout (i, f, o, g), the sigma rows halved */
static inline void SUF(nn_to_arranged)(REAL *restrict a, int64_t H, int64_t u0, int64_t u1)
{
    const REAL half = (REAL)0.5;
#pragma omp simd
    for (int64_t j = u0; j < u1; j++) {
        const REAL g = a[2 * H + j];
        a[j] *= half;
        a[H + j] *= half;
        a[2 * H + j] = a[3 * H + j] * half;
        a[3 * H + j] = g;
    }
}

/* Units [u0, u1) of the cell on arranged gate rows g (i, f, o, g, H each, tanh applied: for a
 * σ row, whose product was halved, σ = ½ tanh + ½): c = f c + i g, h = o tanh(c). Returns the
 * units' part of w_p . c (the new c: the feature Δũ reads). Inlined: each caller's vector width. */
static inline __attribute__((always_inline)) REAL SUF(arranged_cell)(
    const REAL *restrict g, REAL *restrict c, REAL *restrict h, const REAL *restrict gw, int64_t H,
    int64_t u0, int64_t u1)
{
    const REAL half = (REAL)0.5;
    REAL z = 0;
#pragma omp simd reduction(+:z)
    for (int64_t j = u0; j < u1; j++) {
        const REAL i = g[j] * half + half, f = g[H + j] * half + half;
        const REAL cn = f * c[j] + i * g[3 * H + j];
        c[j] = cn;
        h[j] = cn;
        z += gw[j] * cn;
    }
    SUF(tanh_inplace)(h + u0, u1 - u0);
#pragma omp simd
    for (int64_t j = u0; j < u1; j++) h[j] *= g[2 * H + j] * half + half;
    return z;
}

/* The row length of the transposed W_hh (WT) that axpy_gemv reads, the rows past 4H zero: 4H
 * rounded up to its blocks of 128 (the caller allocates WT so) */
int64_t SUF(single_wt_rows)(int64_t H)
{
#if defined(__AVX512F__) && !defined(SKIPRNN_DOUBLE)
    return (4 * H + 127) / 128 * 128;
#else
    return 4 * H;
#endif
}

/* a = WT^T h + xp as AXPYs over the columns of W_hh (WT's rows, Rp = single_wt_rows(H) long),
 * 128 rows of a at a time held in registers: no per-row horizontal sum (a dot product of H = 110
 * ends in one for each of the 440 rows, most of the product's cost at that size). WT's zero
 * padding makes the last block a whole one too (eight independent sums, not a dependent chain
 * per 16 rows); only its xp loads and a stores are masked. */
#if defined(__AVX512F__) && !defined(SKIPRNN_DOUBLE)
static inline __mmask16 rows_mask(int64_t left)
{
    return left >= 16 ? (__mmask16)0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
}

static void axpy_gemv_f32(const float *WT, const float *h, const float *xp, float *a, int64_t H)
{
    const int64_t R = 4 * H, Rp = single_wt_rows_f32(H);
    for (int64_t r0 = 0; r0 < Rp; r0 += 128) {
        const int64_t left = R - r0;
        __m512 a0 = _mm512_maskz_loadu_ps(rows_mask(left), xp + r0);
        __m512 a1 = _mm512_maskz_loadu_ps(rows_mask(left - 16), xp + r0 + 16);
        __m512 a2 = _mm512_maskz_loadu_ps(rows_mask(left - 32), xp + r0 + 32);
        __m512 a3 = _mm512_maskz_loadu_ps(rows_mask(left - 48), xp + r0 + 48);
        __m512 a4 = _mm512_maskz_loadu_ps(rows_mask(left - 64), xp + r0 + 64);
        __m512 a5 = _mm512_maskz_loadu_ps(rows_mask(left - 80), xp + r0 + 80);
        __m512 a6 = _mm512_maskz_loadu_ps(rows_mask(left - 96), xp + r0 + 96);
        __m512 a7 = _mm512_maskz_loadu_ps(rows_mask(left - 112), xp + r0 + 112);
        for (int64_t k = 0; k < H; k++) {
            const float *w = WT + k * Rp + r0;
            const __m512 hk = _mm512_set1_ps(h[k]);
            a0 = _mm512_fmadd_ps(hk, _mm512_loadu_ps(w), a0);
            a1 = _mm512_fmadd_ps(hk, _mm512_loadu_ps(w + 16), a1);
            a2 = _mm512_fmadd_ps(hk, _mm512_loadu_ps(w + 32), a2);
            a3 = _mm512_fmadd_ps(hk, _mm512_loadu_ps(w + 48), a3);
            a4 = _mm512_fmadd_ps(hk, _mm512_loadu_ps(w + 64), a4);
            a5 = _mm512_fmadd_ps(hk, _mm512_loadu_ps(w + 80), a5);
            a6 = _mm512_fmadd_ps(hk, _mm512_loadu_ps(w + 96), a6);
            a7 = _mm512_fmadd_ps(hk, _mm512_loadu_ps(w + 112), a7);
        }
        _mm512_mask_storeu_ps(a + r0, rows_mask(left), a0);
        _mm512_mask_storeu_ps(a + r0 + 16, rows_mask(left - 16), a1);
        _mm512_mask_storeu_ps(a + r0 + 32, rows_mask(left - 32), a2);
        _mm512_mask_storeu_ps(a + r0 + 48, rows_mask(left - 48), a3);
        _mm512_mask_storeu_ps(a + r0 + 64, rows_mask(left - 64), a4);
        _mm512_mask_storeu_ps(a + r0 + 80, rows_mask(left - 80), a5);
        _mm512_mask_storeu_ps(a + r0 + 96, rows_mask(left - 96), a6);
        _mm512_mask_storeu_ps(a + r0 + 112, rows_mask(left - 112), a7);
    }
}
#else
static void SUF(axpy_gemv)(const REAL *WT, const REAL *h, const REAL *xp, REAL *a, int64_t H)
{
    const int64_t R = 4 * H, Rp = SUF(single_wt_rows)(H);
    memcpy(a, xp, (size_t)R * sizeof(REAL));
    for (int64_t k = 0; k < H; k++) {
        const REAL hk = h[k];
        const REAL *restrict w = WT + k * Rp;
#pragma omp simd
        for (int64_t r = 0; r < R; r++) a[r] += hk * w[r];
    }
}
#endif

SINGLE_VECTORS static double SUF(lstm_single_update)(SUF(single_args) *p, const REAL *xp)
{
    const int64_t H = p->H, R = 4 * H, Q = R / 4;   /* Q blocks of 4 rows */
    const int flip = (int)p->flip;
    REAL *restrict a = p->a, *restrict c = p->c, *restrict h = p->h;
    REAL z = 0;
    p->flip = !p->flip;
    if (p->WT && p->threads <= 1) {   /* one core: the product as AXPYs, then the cell */
        SUF(axpy_gemv)(p->WT, h, xp, a, H);
        SUF(nn_to_arranged)(a, H, 0, H);
        SUF(tanh_inplace)(a, R);
        z = SUF(arranged_cell)(a, c, h, p->gw, H, 0, H);
        return SUF(sig)(z + (REAL)p->gb);
    }
#pragma omp parallel num_threads((int)p->threads) if (p->threads > 1) reduction(+:z)
    {
        THREAD_IDS(nt, k);
        const int64_t lo = Q * k / nt, hi = Q * (k + 1) / nt;
        for (int64_t q = lo; q < hi; q++) {
            const int64_t r = 4 * (flip ? hi - 1 - (q - lo) : q);
            REAL acc[4];
            SUF(dot4)(p->W + r * H, h, H, acc);
            for (int e = 0; e < 4; e++) a[r + e] = acc[e] + xp[r + e];
        }
#pragma omp barrier
        /* the layout, tanh and the cell, units split over the threads (h is read above: written
         * only now) */
        const int64_t u0 = H * k / nt, u1 = H * (k + 1) / nt;
        SUF(nn_to_arranged)(a, H, u0, u1);
        for (int g = 0; g < 4; g++) SUF(tanh_inplace)(a + g * H + u0, u1 - u0);
        z += SUF(arranged_cell)(a, c, h, p->gw, H, u0, u1);
    }
    return SUF(sig)(z + (REAL)p->gb);
}

/* The steps of a batch-size-1 sequence from position k of `steps` on (skipping.py, run_single),
 * each skipped (u~' = u~ + min(du, 1 - u~) <= tau: u~ replayed, the output the held h) or read
 * (one lstm_single_update from the step's row of the projection block, du' = max(its result,
 * floor), u~ = 0), until the steps end (returns 0) or a step to read has no row in the block
 * (returns 1, k at that step: the caller projects a block holding it and calls again). */
typedef struct {
    const int64_t *steps;  /* the steps that count, increasing (NULL: 0 .. n_steps - 1) */
    int64_t k, n_steps;    /* the next position in steps (in/out); their number */
    int64_t cur;           /* the row of hist holding the top h (in/out; 0 before any update) */
    const char *block;     /* projection rows of steps b_start, b_start + b_stride, .., b_last */
    int64_t b_start, b_stride, b_last, row_bytes;
    REAL *p, *u;           /* (T) u~ and u of every step (written where a step counts) */
    int64_t *idx;          /* (T) the row of hist each step outputs */
    REAL *hist;            /* rows of H: 2 + j holds the h of the j-th update */
    int64_t *reads;        /* (n_steps) the steps this call read, n_reads of them */
    int64_t n_reads, has_floor;
    REAL up, cum;          /* the state's du (floored) and u~ (in/out) */
    REAL thr, floor;       /* tau; the floor on du (has_floor) */
} SUF(run_args);

int64_t SUF(lstm_single_run)(SUF(single_args) *s, SUF(run_args) *r)
{
    const int64_t H = s->H;
    const REAL one = 1, thr = r->thr;
    REAL up = r->up, cum = r->cum;
    int64_t k = r->k, cur = r->cur, status = 0;
    r->n_reads = 0;
    for (; k < r->n_steps; k++) {
        const int64_t t = r->steps ? r->steps[k] : k;
        const REAL rest = one - cum, ut = cum + (rest < up ? rest : up);
        if (!(ut > thr)) {        /* skipped: ũ grows, the output holds */
            r->p[t] = ut;
            r->idx[t] = cur;
            cum = ut;
            continue;
        }
        const int64_t off = t - r->b_start;
        if (r->block == NULL || off < 0 || t > r->b_last || off % r->b_stride) {
            status = 1;
            break;
        }
        r->p[t] = ut;
        r->u[t] = one;
        REAL d = (REAL)SUF(lstm_single_update)(
            s, (const REAL *)(r->block + (off / r->b_stride) * r->row_bytes));
        cur += cur ? 1 : 2;
        memcpy(r->hist + cur * H, s->h, (size_t)H * sizeof(REAL));
        if (r->has_floor && d < r->floor) d = r->floor;   /* (a NaN stays NaN, as np.maximum) */
        up = d;
        cum = 0;
        r->idx[t] = cur;
        r->reads[r->n_reads++] = t;
    }
    r->k = k, r->cur = cur, r->up = up, r->cum = cum;
    return status;
}

/* ------------------------------------------------------------------------------------------
 * Batches, no autograd (skiprnn/ops/waves.py, run_waves): a one-layer Skip LSTM's whole
 * sequence in waves. Each column's next update is known at its last one (the u~ recursion
 * replayed from (du, u~)); wave k runs the k-th pending update of every column that has one,
 * whatever step each is at: one GEMM [x_t | h | 1] Wt over those columns (Wt = arranged
 * [W_ih | W_hh | b]^T: gate columns (i, f, o, g), the sigma ones halved), then per column the
 * cell, du = max(sigmoid(w_p . c + b_p), floor), and the replay to its next update (u~ of every
 * step in between). Steps are ordinals of a column's valid steps (times: ordinal -> time step;
 * padding steps output 0 and keep u~ 0). Each update's h is appended to a compact history (rows
 * of a wave side by side), and the (T, B, H) output is filled at the end in time order, each
 * step's row from its column's latest update: writes in order, where writing the held h over
 * each column's skipped steps as it is replayed scatters them over the whole output (1.2x nn.LSTM
 * instead of 0.9x for a learned MNIST gate). Columns are split over the threads for the pointwise
 * work and the replay; the GEMM is BLAS's.
 */
typedef struct {
    int64_t T, B, I, H, threads;
    const REAL *x;          /* (T, B, I) */
    const REAL *Wt;         /* (I + H + 1, 4H) */
    const REAL *gw;         /* (H) w_p */
    double gb;
    const int64_t *times;   /* (T, B): times[o * B + b] = time of column b's o-th valid step,
                               its padding steps after them (NULL: no padding) */
    const int64_t *n_valid; /* (B) valid steps per column */
    const uint8_t *valid;   /* (T, B) or NULL */
    REAL *up, *cum;         /* (B) du (floored) and u~ (in/out) */
    REAL *h, *c;            /* (B, H) state (in/out: the state after each column's last update) */
    REAL *out;              /* (T, B, H) */
    REAL *probs, *upd;      /* (T, B) u~ and u (zero-filled by the caller) */
    REAL *hist;             /* (B + 1 + sum n_valid, H): rows 0..B-1 written here (the carried
                               h), row B zeros, then one row per update */
    int64_t *src;           /* (T, B) zero-filled: 1 + the hist row of the update at (t, b) */
    REAL *S, *G;            /* scratch (B, I + H + 1), (B, 4H) */
    int64_t *live, *at;     /* scratch (B): the columns to update, the ordinal of their update */
    int64_t *cur;           /* scratch (threads, B) */
    void *gemm;             /* SUF(gemm_fn) */
    int64_t has_floor;
    REAL thr, floor;
    int64_t waves;          /* out: the number of waves */
} SUF(waves_args);

#define TIME_OF(p, o, b) ((p)->times ? (p)->times[(o) * (p)->B + (b)] : (o))

/* Column b from ordinal o on with (du, u~ = cum): u~ of every step to the next update (that
 * one's too) into probs. Returns the ordinal of the next update, or n_valid[b] (none: *cum is
 * the u~ after the last step). */
static int64_t SUF(replay)(const SUF(waves_args) *p, int64_t b, int64_t o, REAL du, REAL *cum)
{
    const int64_t B = p->B, n = p->n_valid[b];
    const REAL one = 1, thr = p->thr;
    REAL cm = *cum;
    for (; o < n; o++) {
        const REAL rest = one - cm, ut = cm + (rest < du ? rest : du);
        p->probs[TIME_OF(p, o, b) * B + b] = ut;
        if (ut > thr)
            break;
        cm = ut;
    }
    *cum = cm;
    return o;
}

int64_t SUF(lstm_waves)(SUF(waves_args) *p)
{
    const int64_t T = p->T, B = p->B, H = p->H, I = p->I, K = I + H + 1, G4 = 4 * H;
    const REAL one = 1;
    const int par = p->threads > 1 && B * H >= 4096;
    int64_t m = 0, n_hist = B + 1;
    memcpy(p->hist, p->h, (size_t)(B * H) * sizeof(REAL));
    memset(p->hist + B * H, 0, (size_t)H * sizeof(REAL));
    for (int64_t b = 0; b < B; b++) {   /* every column from its carried (du, u~) */
        REAL cm = p->cum[b];
        const int64_t o = SUF(replay)(p, b, 0, p->up[b], &cm);
        if (o < p->n_valid[b])
            p->live[m] = b, p->at[m++] = o, p->cum[b] = 0;
        else
            p->cum[b] = cm;
    }
    p->waves = 0;
    while (m > 0) {
        p->waves++;
        /* S = [x_t | h | 1] of the live columns */
        for (int64_t i = 0; i < m; i++) {
            const int64_t b = p->live[i], t = TIME_OF(p, p->at[i], b);
            REAL *s = p->S + i * K;
            memcpy(s, p->x + (t * B + b) * I, (size_t)I * sizeof(REAL));
            memcpy(s + I, p->h + b * H, (size_t)H * sizeof(REAL));
            s[I + H] = one;
        }
        {   /* column-major: G^T (4H x m) = Wt^T (4H x K) S^T (K x m) */
            const int mm = (int)G4, nn = (int)m, kk = (int)K;
            const REAL alpha = 1, beta = 0;
            ((SUF(gemm_fn))p->gemm)("N", "N", &mm, &nn, &kk, &alpha, p->Wt, &mm, p->S, &kk, &beta,
                                    p->G, &mm);
        }
#pragma omp parallel for num_threads((int)p->threads) if (par) schedule(static)
        for (int64_t i = 0; i < m; i++) {
            const int64_t b = p->live[i], t = TIME_OF(p, p->at[i], b);
            REAL *restrict g = p->G + i * G4, *restrict hb = p->hist + (n_hist + i) * H,
                 *restrict cb = p->c + b * H;
            SUF(tanh_inplace)(g, G4);
            const REAL z = SUF(arranged_cell)(g, cb, hb, p->gw, H, 0, H);
            memcpy(p->h + b * H, hb, (size_t)H * sizeof(REAL));
            REAL du = SUF(sig)(z + (REAL)p->gb);
            if (p->has_floor && du < p->floor) du = p->floor;   /* (NaN stays NaN) */
            p->up[b] = du;
            p->upd[t * B + b] = one;
            p->src[t * B + b] = 1 + n_hist + i;
            REAL cm = 0;
            p->at[i] = SUF(replay)(p, b, p->at[i] + 1, du, &cm);
            p->cum[b] = p->at[i] < p->n_valid[b] ? 0 : cm;
        }
        n_hist += m;
        int64_t next_m = 0;
        for (int64_t i = 0; i < m; i++)   /* keep the columns that update again, in order */
            if (p->at[i] < p->n_valid[p->live[i]])
                p->live[next_m] = p->live[i], p->at[next_m++] = p->at[i];
        m = next_m;
    }
    /* the output in time order: each step's row from its column's latest update (at first the
     * carried h, row b), zeros on padding; in blocks of steps over the threads (the output's
     * first touch, its page faults, is most of the cost), each block starting from its columns'
     * rows at its first step (cur) */
    const int64_t nt = par ? p->threads : 1;
    int64_t *cur = p->cur;
    for (int64_t b = 0; b < B; b++) cur[b] = b;
    for (int64_t k = 1; k < nt; k++) {   /* rows at each block's first step */
        memcpy(cur + k * B, cur + (k - 1) * B, (size_t)B * sizeof(int64_t));
        for (int64_t t = T * (k - 1) / nt; t < T * k / nt; t++)
            for (int64_t b = 0; b < B; b++)
                if (p->src[t * B + b]) cur[k * B + b] = p->src[t * B + b] - 1;
    }
#pragma omp parallel for num_threads((int)nt) if (nt > 1) schedule(static, 1)
    for (int64_t k = 0; k < nt; k++) {
        int64_t *row_of = cur + k * B;
        for (int64_t t = T * k / nt; t < T * (k + 1) / nt; t++) {
            for (int64_t b = 0; b < B; b++) {
                const int64_t s = p->src[t * B + b];
                if (s) row_of[b] = s - 1;
                const int64_t row = p->valid && !p->valid[t * B + b] ? B : row_of[b];
                memcpy(p->out + (t * B + b) * H, p->hist + row * H, (size_t)H * sizeof(REAL));
            }
        }
    }
    return p->waves;
}
