/*
 * hashrec.index._scan: the exact Hamming top-C scan of the Retriever's flat index (one C function).
 *
 * Why it exists: FAISS's IndexBinaryFlat search (counting mode) costs more per query than the whole
 * two-stage answer did with a scan of our own; benchmarks/retrieval.py measures this kernel against FAISS
 * at 1M items and at Gowalla's catalogue, side by side, and docs/benchmarks.md reports it.
 *
 * Contract of hamming_topc (called through ctypes by index/scan.py; no Python object is built here):
 *   items      n_items codes of code_size bytes each (the FAISS flat index's own code array);
 *   queries    n_queries codes of code_size bytes;
 *   excl_ptr, excl_ids   CSR exclusions: query q never returns excl_ids[excl_ptr[q] .. excl_ptr[q+1]);
 *                        ids outside [0, n_items) and repeated ids are ignored; both NULL = none;
 *   allow      NULL, or n_items flags: only items whose flag is non-zero are returned;
 *   out_dist, out_idx    [n_queries, c]: per query the c eligible items nearest in Hamming distance,
 *                        ordered by (distance, item id); empty slots hold distance bits + 1 and id -1.
 * Returns 0, or -1 when its scratch memory cannot be allocated (outputs then undefined).
 * The GIL is released by ctypes during the call: several threads may scan at once (nothing is shared).
 *
 * Method: a histogram of a sample of the items guesses the distance t within which the c-th eligible item
 * lies; one pass over all items keeps the eligible ones within t (a compare per item, rarely taken), a
 * second pass with t = bits runs only when the guess was too small; a counting sort of the kept items
 * (already in id order) by distance gives the first c by (distance, id) with no comparison sort.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

/* Hamming distance of a code to q, for code sizes known at compile time (unrolled) or not. */
#define DIST(items, i, q, N) hamming((items) + (i) * (N), (q), (N))

/* A guess t of the distance within which the query's c-th eligible item lies, from a histogram of a sample
 * of the items (every item when there are few); `eligible` is the share of items that may be returned.
 * A guess too small is caught by the caller (fewer than c found: rescan with t = bits); too large only
 * costs candidates. */
static int guess_threshold(const uint8_t *items, int64_t n_items, int64_t code_size, const uint8_t *q,
                           int64_t c, int64_t n_excl, double eligible, int bits, int64_t *hist) {
    const int64_t run = 64, want_sample = 2048;
    int64_t stride = n_items > want_sample ? (n_items / want_sample) * run : run; /* one run per stride */
    int64_t sampled = 0;
    memset(hist, 0, (size_t)(bits + 2) * sizeof(int64_t));
    for (int64_t lo = 0; lo < n_items; lo += stride) {
        int64_t hi = lo + run < n_items ? lo + run : n_items;
        for (int64_t i = lo; i < hi; i++) hist[DIST(items, i, q, code_size)]++;
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
 * Items go four at a time with one branch for the four (almost always not taken): the loop is bound by
 * branches, not by popcounts, otherwise. */
static int64_t collect(const uint8_t *items, int64_t n_items, int64_t code_size, const uint8_t *q, int t,
                       const uint8_t *out, const uint8_t *allow, uint32_t *cid, uint16_t *cd) {
    int64_t m = 0, i = 0;
#define KEEP(j, d)                                                                   \
    cid[m] = (uint32_t)(j), cd[m] = (uint16_t)(d);                                   \
    m += ((d) <= t) & !out[j] & (allow ? allow[j] != 0 : 1); /* branch-free: clustered codes pass often */
#define COLLECT(N)                                                                   \
    for (; i + 4 <= n_items; i += 4) {                                               \
        int d0 = DIST(items, i, q, N), d1 = DIST(items, i + 1, q, N);                \
        int d2 = DIST(items, i + 2, q, N), d3 = DIST(items, i + 3, q, N);            \
        if (((d0 <= t) | (d1 <= t) | (d2 <= t) | (d3 <= t)) == 0) continue;          \
        KEEP(i, d0) KEEP(i + 1, d1) KEEP(i + 2, d2) KEEP(i + 3, d3)                  \
    }                                                                                \
    for (; i < n_items; i++) {                                                       \
        int d = DIST(items, i, q, N);                                                \
        KEEP(i, d)                                                                   \
    }
    switch (code_size) {
        case 8: COLLECT(8); break;
        case 16: COLLECT(16); break;
        case 32: COLLECT(32); break;
        default: COLLECT(code_size); break;
    }
#undef COLLECT
#undef KEEP
    return m;
}

int hamming_topc(const uint8_t *items, int64_t n_items, int64_t code_size, const uint8_t *queries,
                 int64_t n_queries, const int64_t *excl_ptr, const int64_t *excl_ids, const uint8_t *allow,
                 int64_t c, int32_t *out_dist, int64_t *out_idx) {
    const int bits = (int)(8 * code_size);
    if (code_size < 1 || bits + 1 > UINT16_MAX || c < 0 || n_items > (int64_t)UINT32_MAX) return -1;
    size_t n = (size_t)(n_items > 0 ? n_items : 1);
    uint32_t *cid = malloc(n * sizeof(uint32_t));
    uint16_t *cd = malloc(n * sizeof(uint16_t));
    uint8_t *out = calloc(n, 1); /* 1 = excluded for the current query (set, then cleared, per query) */
    int64_t *hist = malloc((size_t)(bits + 2) * sizeof(int64_t));
    int64_t *slot = malloc((size_t)(bits + 2) * sizeof(int64_t));
    if (!cid || !cd || !out || !hist || !slot) {
        free(cid), free(cd), free(out), free(hist), free(slot);
        return -1;
    }
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
        int t = guess_threshold(items, n_items, code_size, qc, c, e1 - e0, eligible, bits, hist);
        int64_t m = collect(items, n_items, code_size, qc, t, out, allow, cid, cd);
        if (m < c && t < bits) m = collect(items, n_items, code_size, qc, bits, out, allow, cid, cd);
        for (int64_t e = e0; e < e1; e++)
            if (excl_ids[e] >= 0 && excl_ids[e] < n_items) out[excl_ids[e]] = 0;
        /* counting sort of the candidates (already in id order) by distance: the first c */
        memset(hist, 0, (size_t)(bits + 2) * sizeof(int64_t));
        for (int64_t j = 0; j < m; j++) hist[cd[j]]++;
        int64_t start = 0;
        for (int d = 0; d <= bits; d++) slot[d] = start, start += hist[d];
        for (int64_t j = 0; j < m; j++) {
            int64_t s = slot[cd[j]]++;
            if (s < c) oi[s] = cid[j], od[s] = cd[j];
        }
        for (int64_t j = m; j < c; j++) oi[j] = -1, od[j] = bits + 1;
    }
    free(cid), free(cd), free(out), free(hist), free(slot);
    return 0;
}

/* A Python module with no methods: importing it proves the build happened (the install builds it, always);
 * index/scan.py then loads the same shared object with ctypes to reach hamming_topc. */
static struct PyModuleDef scan_module = {PyModuleDef_HEAD_INIT, "_scan", NULL, 0, NULL};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&scan_module); }
