/*
 * hashrec.index._scan: the exact Hamming top-C scan of the Retriever's flat index (one C function).
 *
 * Why it exists: FAISS's IndexBinaryFlat search (counting mode) costs more per query than the whole
 * two-stage answer did with a scan of our own; benchmarks/retrieval.py measures this kernel against FAISS
 * at 1M items and at Gowalla's catalogue, side by side, and docs/benchmarks.md reports it.
 *
 * Contract of hamming_topc (called by index/scan.py through the module's topc; no Python object is built
 * from its results: they are written into the caller's arrays):
 *   items      n_items codes of code_size bytes each (the FAISS flat index's own code array);
 *   queries    n_queries codes of code_size bytes;
 *   excl_ptr, excl_ids   CSR exclusions: query q never returns excl_ids[excl_ptr[q] .. excl_ptr[q+1]);
 *                        ids outside [0, n_items) and repeated ids are ignored; both NULL = none;
 *   allow      NULL, or n_items flags: only items whose flag is non-zero are returned;
 *   out_dist, out_idx    [n_queries, c]: per query the c eligible items nearest in Hamming distance,
 *                        ordered by (distance, item id); empty slots hold distance bits + 1 and id -1.
 * Returns 0, or -1 when its scratch memory cannot be allocated (outputs then undefined).
 * The GIL is released during the call: several threads may scan at once (nothing is shared).
 *
 * Method: a histogram of a sample of the items guesses the distance t within which the c-th eligible item
 * lies; one pass over all items keeps the eligible ones within t (distances a block at a time, vectorised
 * by the compiler, then a flag per item; only the rare flagged ones are copied), and when the guess was too
 * small, passes with a wider t (t + 2, + 4, ...) follow; a counting sort of the kept items (already in id
 * order) by distance gives the first c by (distance, id) with no comparison sort.
 *
 * Python entry points (at the end): topc, a thin argument check around hamming_topc that reads numpy
 * arrays in place through the buffer protocol (a ctypes call, which this replaced, spent more time building
 * its pointer arguments than the scan of a small catalogue took), and use_vector_popcount (which build of
 * the distance loop runs; tests check both).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static inline int popcount64(uint64_t x) { return __builtin_popcountll(x); }

/* Hamming distance of two codes of n bytes (n a multiple of 8 handled by words, then the tail bytes). */
static inline int hamming(const uint8_t *a, const uint8_t *b, int64_t n) {
    int d = 0;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        uint64_t x, y;
        memcpy(&x, a + j, 8);
        memcpy(&y, b + j, 8);
        d += popcount64(x ^ y);
    }
    for (; j < n; j++) d += popcount64((uint64_t)(a[j] ^ b[j]));
    return d;
}


/* Distances of n consecutive codes to q, into d: a loop with no branch, so that the compiler vectorises it
 * where the CPU has a vector popcount. It is compiled twice, once for the baseline (one popcnt per word) and
 * once with AVX-512 VPOPCNTDQ (eight 64-bit codes per instruction); distances() points to the one this CPU
 * runs, chosen once when the library loads. */
static inline __attribute__((always_inline)) void distances_body(const uint8_t *codes, int64_t n,
                                                                 int64_t code_size, const uint8_t *q,
                                                                 uint16_t *restrict d) {
    if (code_size == 8) { /* 64-bit codes, the default: one word per code */
        uint64_t qw;
        memcpy(&qw, q, 8);
        for (int64_t i = 0; i < n; i++) {
            uint64_t x;
            memcpy(&x, codes + 8 * i, 8);
            d[i] = (uint16_t)__builtin_popcountll(x ^ qw);
        }
        return;
    }
    /* other sizes: a constant width where it is a common one, so the compiler unrolls the words */
    if (code_size == 16)
        for (int64_t i = 0; i < n; i++) d[i] = (uint16_t)hamming(codes + 16 * i, q, 16);
    else if (code_size == 32)
        for (int64_t i = 0; i < n; i++) d[i] = (uint16_t)hamming(codes + 32 * i, q, 32);
    else
        for (int64_t i = 0; i < n; i++) d[i] = (uint16_t)hamming(codes + i * code_size, q, code_size);
}

typedef void (*distances_fn)(const uint8_t *, int64_t, int64_t, const uint8_t *, uint16_t *restrict);

static void distances_baseline(const uint8_t *codes, int64_t n, int64_t code_size, const uint8_t *q,
                               uint16_t *restrict d) {
    distances_body(codes, n, code_size, q, d);
}

static distances_fn distances = distances_baseline;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target("avx512f,avx512vl,avx512bw,avx512vpopcntdq"))) static void distances_vpopcnt(
    const uint8_t *codes, int64_t n, int64_t code_size, const uint8_t *q, uint16_t *restrict d) {
    distances_body(codes, n, code_size, q, d);
}

static int has_vpopcnt(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw");
}
#else
#define distances_vpopcnt distances_baseline
static int has_vpopcnt(void) { return 0; }
#endif

/* Use the vector popcount when `enable` and the CPU has it, else the baseline; returns whether the vector
 * one is in use. Called once when the library loads (enabled); tests call it to check both builds. */
static int hamming_use_vector_popcount(int enable) {
    int on = enable && has_vpopcnt();
    distances = on ? distances_vpopcnt : distances_baseline;
    return on;
}

__attribute__((constructor)) static void pick_distances(void) { hamming_use_vector_popcount(1); }

/* 64 byte flags (each 0 or 1) -> one 64-bit mask, bit k = flag k. SSE2 (every x86-64) reads 16 flags per
 * instruction; elsewhere a plain loop. */
static inline uint64_t flag_bits(const uint8_t *f) {
    uint64_t w = 0;
#if defined(__SSE2__)
    for (int k = 0; k < 4; k++) {
        __m128i v = _mm_slli_epi16(_mm_loadu_si128((const __m128i *)(f + 16 * k)), 7); /* flag -> sign bit */
        w |= (uint64_t)(uint16_t)_mm_movemask_epi8(v) << (16 * k);
    }
#else
    for (int k = 0; k < 64; k++) w |= (uint64_t)f[k] << k;
#endif
    return w;
}

#define BLOCK 1024 /* codes per distances() call: its output stays in L1 */

/* A guess t of the distance within which the query's c-th eligible item lies, from a histogram of a sample
 * of the items (every item when there are few); `eligible` is the share of items that may be returned.
 * A guess too small is caught by the caller (fewer than c found: widen t and rescan); too large only
 * costs candidates. */
static int guess_threshold(const uint8_t *items, int64_t n_items, int64_t code_size, const uint8_t *q,
                           int64_t c, int64_t n_excl, double eligible, int bits, int64_t *hist, uint16_t *d) {
    const int64_t run = 64, want_sample = 2048;
    int64_t stride = n_items > want_sample ? (n_items / want_sample) * run : run; /* one run per stride */
    int64_t sampled = 0;
    memset(hist, 0, (size_t)(bits + 2) * sizeof(int64_t));
    for (int64_t lo = 0; lo < n_items; lo += stride) {
        int64_t hi = lo + run < n_items ? lo + run : n_items;
        distances(items + lo * code_size, hi - lo, code_size, q, d);
        for (int64_t i = 0; i < hi - lo; i++) hist[d[i]]++;
        sampled += hi - lo;
    }
    if (sampled >= n_items) eligible = eligible > 0 ? eligible : 1e-9;
    /* items needed among all: c eligible ones plus the excluded ones that may sit in front of them;
     * then the sample's share of that, with 50% and 8 items of slack against sampling noise */
    double need = ((double)c / (eligible > 0 ? eligible : 1e-9) + (double)n_excl) * (double)sampled /
                      (double)n_items * 1.5 + 8.0;
    int64_t cum = 0;
    for (int t = 0; t <= bits; t++) {
        cum += hist[t];
        if ((double)cum >= need) return t;
    }
    return bits;
}

/* Appends (id, distance) of every eligible item within distance t, in id order; returns their number.
 * Per block: the distances (distances()), then one flag per item, "within t and eligible" (loops with no
 * branch, which the compiler vectorises on any x86-64); 64 flags become one bit mask and only its set bits
 * are visited. (A branch per item cost more than the whole scan; a branch per word of eight byte flags,
 * taken at random, cost about a third of it.) */
static int64_t collect(const uint8_t *items, int64_t n_items, int64_t code_size, const uint8_t *q, int t,
                       const uint8_t *out, const uint8_t *allow, uint32_t *cid, uint16_t *cd, uint16_t *d) {
    int64_t m = 0;
    const uint16_t tt = (uint16_t)t;
    uint8_t flag[BLOCK]; /* BLOCK is a multiple of 64: whole masks */
    for (int64_t lo = 0; lo < n_items; lo += BLOCK) {
        int64_t len = n_items - lo < BLOCK ? n_items - lo : BLOCK;
        distances(items + lo * code_size, len, code_size, q, d);
        const uint8_t *o = out + lo;
        if (allow) {
            const uint8_t *a = allow + lo;
            for (int64_t j = 0; j < len; j++) flag[j] = (uint8_t)((d[j] <= tt) & (o[j] == 0) & (a[j] != 0));
        } else {
            for (int64_t j = 0; j < len; j++) flag[j] = (uint8_t)((d[j] <= tt) & (o[j] == 0));
        }
        for (int64_t j = len; j < (len + 63) / 64 * 64; j++) flag[j] = 0; /* the last mask's padding */
        for (int64_t j = 0; j < len; j += 64)
            for (uint64_t w = flag_bits(flag + j); w; w &= w - 1) {
                int b = __builtin_ctzll(w);
                cid[m] = (uint32_t)(lo + j + b), cd[m] = d[j + b], m++;
            }
    }
    return m;
}

static int hamming_topc(const uint8_t *items, int64_t n_items, int64_t code_size, const uint8_t *queries,
                 int64_t n_queries, const int64_t *excl_ptr, const int64_t *excl_ids, const uint8_t *allow,
                 int64_t c, int32_t *out_dist, int64_t *out_idx) {
    const int bits = (int)(8 * code_size);
    if (code_size < 1 || bits + 1 > UINT16_MAX || c < 0 || n_items > (int64_t)UINT32_MAX) return -1;
    size_t n = (size_t)(n_items > 0 ? n_items : 1);
    uint32_t *cid = malloc(n * sizeof(uint32_t)); /* kept candidates: ids, distances, then ids sorted */
    uint16_t *cd = malloc(n * sizeof(uint16_t));
    uint32_t *sorted = malloc(n * sizeof(uint32_t));
    uint8_t *out = calloc(n, 1); /* 1 = excluded for the current query (set, then cleared, per query) */
    int64_t *hist = malloc((size_t)(bits + 2) * sizeof(int64_t));
    int64_t *slot = malloc((size_t)(bits + 2) * sizeof(int64_t));
    if (!cid || !cd || !sorted || !out || !hist || !slot) {
        free(cid), free(cd), free(sorted), free(out), free(hist), free(slot);
        return -1;
    }
    uint16_t d[BLOCK]; /* one block's distances */
    double eligible = 1.0;
    if (allow) {
        int64_t a = 0;
        for (int64_t i = 0; i < n_items; i++) a += allow[i] != 0;
        eligible = n_items ? (double)a / (double)n_items : 0.0;
    }
    for (int64_t q = 0; q < n_queries; q++) {
        const uint8_t *qc = queries + q * code_size;
        int32_t *od = out_dist + q * c;
        int64_t *oi = out_idx + q * c;
        int64_t e0 = excl_ptr && excl_ids ? excl_ptr[q] : 0, e1 = excl_ptr && excl_ids ? excl_ptr[q + 1] : 0;
        for (int64_t e = e0; e < e1; e++)
            if (excl_ids[e] >= 0 && excl_ids[e] < n_items) out[excl_ids[e]] = 1;
        int t = guess_threshold(items, n_items, code_size, qc, c, e1 - e0, eligible, bits, hist, d);
        int64_t m = collect(items, n_items, code_size, qc, t, out, allow, cid, cd, d);
        for (int step = 2; m < c && t < bits; step *= 2) { /* the guess was too small: widen it and rescan */
            t = t + step < bits ? t + step : bits;
            m = collect(items, n_items, code_size, qc, t, out, allow, cid, cd, d);
        }
        for (int64_t e = e0; e < e1; e++)
            if (excl_ids[e] >= 0 && excl_ids[e] < n_items) out[excl_ids[e]] = 0;
        /* counting sort of the candidates (already in id order) by distance, stable, with no branch per
         * candidate (one per candidate, taken at random, cost more than the scan); then the first c */
        memset(hist, 0, (size_t)(bits + 2) * sizeof(int64_t));
        for (int64_t j = 0; j < m; j++) hist[cd[j]]++;
        int64_t start = 0;
        for (int d = 0; d <= bits; d++) slot[d] = start, start += hist[d];
        for (int64_t j = 0; j < m; j++) sorted[slot[cd[j]]++] = cid[j];
        int64_t filled = m < c ? m : c, j = 0;
        for (int dist = 0; dist <= bits && j < filled; dist++) /* hist[dist] slots in a row have distance dist */
            for (int64_t end = j + hist[dist] < filled ? j + hist[dist] : filled; j < end; j++)
                oi[j] = sorted[j], od[j] = dist;
        for (; j < c; j++) oi[j] = -1, od[j] = bits + 1;
    }
    free(cid), free(cd), free(sorted), free(out), free(hist), free(slot);
    return 0;
}

/* --- Python entry points: arguments are buffers (numpy arrays) read in place; nothing is returned but None
 * or an int, so no Python object is built from the results (they land in the caller's output arrays). */

/* A contiguous buffer of exactly `want` bytes (want < 0: any length that is a multiple of -want), or NULL
 * (an error set) when it is not; `obj` None gives an empty view and 1 in *none. */
static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *name, int *none) {
    *none = obj == Py_None;
    if (*none) {
        memset(view, 0, sizeof *view);
        return 0;
    }
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a contiguous%s buffer", name, writable ? " writable" : "");
        return -1;
    }
    return 0;
}

static int check_len(const Py_buffer *v, Py_ssize_t want, const char *name) {
    if (v->len == want) return 0;
    PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %zd", name, v->len, want);
    return -1;
}

/* topc(items, queries, code_size, c, excl_ptr, excl_ids, allow, out_dist, out_idx) -> None
 * items uint8 [n_items * code_size]; queries uint8 [n_queries * code_size]; excl_ptr int64 [n_queries + 1]
 * and excl_ids int64, or both None; allow uint8 [n_items] or None; out_dist int32 and out_idx int64,
 * [n_queries * c], written. Sizes are checked against one another; the GIL is released during the scan. */
static PyObject *py_topc(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 9) return PyErr_Format(PyExc_TypeError, "topc takes 9 arguments, got %zd", nargs);
    Py_ssize_t code_size = PyLong_AsSsize_t(args[2]), c = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) return NULL;
    if (code_size < 1 || c < 0) return PyErr_Format(PyExc_ValueError, "code_size must be >= 1 and c >= 0");
    static const char *names[] = {"items", "queries", "", "", "excl_ptr", "excl_ids", "allow", "out_dist",
                                  "out_idx"};
    Py_buffer v[9];
    int none[9] = {0}, got = 0, ok = 0;
    for (int a = 0; a < 9; a++) {
        if (a == 2 || a == 3) continue;
        if (get_buffer(args[a], &v[a], a >= 7, names[a], &none[a]) < 0) goto done;
        got |= 1 << a;
    }
    if (none[0] || none[1] || none[7] || none[8] || none[4] != none[5]) {
        PyErr_SetString(PyExc_TypeError, "items, queries and the outputs are required; excl_ptr and excl_ids "
                                         "come together");
        goto done;
    }
    if (v[0].len % code_size || v[1].len % code_size) {
        PyErr_SetString(PyExc_ValueError, "items and queries must hold whole codes of code_size bytes");
        goto done;
    }
    Py_ssize_t n_items = v[0].len / code_size, n_q = v[1].len / code_size;
    if (c > n_items) {
        PyErr_Format(PyExc_ValueError, "c = %zd is more than the %zd items", c, n_items);
        goto done;
    }
    if ((!none[4] && check_len(&v[4], 8 * (n_q + 1), "excl_ptr") < 0) ||
        (!none[5] && check_len(&v[5], v[5].len / 8 * 8, "excl_ids") < 0) ||
        (!none[6] && check_len(&v[6], n_items, "allow") < 0) || check_len(&v[7], 4 * n_q * c, "out_dist") < 0 ||
        check_len(&v[8], 8 * n_q * c, "out_idx") < 0)
        goto done;
    const int64_t *ptr = none[4] ? NULL : (const int64_t *)v[4].buf;
    if (ptr) { /* the ids each query reads must lie inside excl_ids */
        for (Py_ssize_t q = 0; q <= n_q; q++)
            if (ptr[q] < 0 || ptr[q] > v[5].len / 8 || (q && ptr[q] < ptr[q - 1])) {
                PyErr_SetString(PyExc_ValueError, "excl_ptr must be non-decreasing offsets into excl_ids");
                goto done;
            }
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS;
    rc = hamming_topc(v[0].buf, n_items, code_size, v[1].buf, n_q, ptr, none[5] ? NULL : v[5].buf,
                      none[6] ? NULL : v[6].buf, c, v[7].buf, v[8].buf);
    Py_END_ALLOW_THREADS;
    if (rc != 0) {
        PyErr_Format(PyExc_MemoryError, "topc could not allocate scratch memory for %zd items", n_items);
        goto done;
    }
    ok = 1;
done:
    for (int a = 0; a < 9; a++)
        if ((got >> a) & 1 && !none[a]) PyBuffer_Release(&v[a]);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* use_vector_popcount(enable) -> bool: see hamming_use_vector_popcount. */
static PyObject *py_use_vector_popcount(PyObject *self, PyObject *arg) {
    (void)self;
    int enable = PyObject_IsTrue(arg);
    if (enable < 0) return NULL;
    return PyBool_FromLong(hamming_use_vector_popcount(enable));
}

static PyMethodDef scan_methods[] = {
    {"topc", (PyCFunction)(void (*)(void))py_topc, METH_FASTCALL, "Hamming top-c scan (see index/_scan.c)."},
    {"use_vector_popcount", py_use_vector_popcount, METH_O, "Choose the distance loop's build."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef scan_module = {PyModuleDef_HEAD_INIT, "_scan", NULL, 0, scan_methods};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&scan_module); }
