/* Exact Hamming top-k over packed binary codes: a threshold-filter scan (hashrec.index._hamming).
 *
 * Why: FAISS's flat binary search keeps a per-query heap (or per-distance buckets) and touches it for
 * every code; at 1M 64-bit codes that costs ~0.6-1 ms per query although the popcounts themselves take
 * ~0.1 ms. Here each query first estimates, from a sample of the codes (64 runs of 256), a distance threshold t
 * that admits a little more than k items; one pass then keeps only the (id, distance) pairs with
 * distance <= t (a vector compare, almost never true), and a counting sort of those few candidates by
 * distance -- stable, so ties stay in item-id order -- yields the exact top-k. When the estimate admitted
 * fewer than k items, the query is rescanned with the exact threshold from a full histogram: the answer
 * is always exact, the rescan only costs time.
 *
 * Contract (checked again in Python, see index/fastscan.py): codes are n rows of nb bytes, queries nq rows
 * of nb bytes, 1 <= k <= n, distances <= 8 * nb <= 65535. Output rows hold the k nearest items sorted by
 * (distance, item id) -- the same answer as FAISS's IndexBinaryFlat. The GIL is released while scanning.
 *
 * Speed paths: 32- and 64-bit codes with AVX-512 VPOPCNTDQ (16 or 8 codes per instruction), chosen at run time with
 * __builtin_cpu_supports; every other case uses the portable word-wise popcount loop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HR_X86 1
#endif

typedef struct {
    uint32_t *ids;
    uint16_t *dist;
    size_t len, cap;
} cands_t;

static int cands_push(cands_t *c, uint32_t id, uint16_t d) {
    if (c->len == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 4096;
        uint32_t *ids = realloc(c->ids, cap * sizeof(uint32_t));
        if (!ids) return -1;
        c->ids = ids;
        uint16_t *dist = realloc(c->dist, cap * sizeof(uint16_t));
        if (!dist) return -1;
        c->dist = dist;
        c->cap = cap;
    }
    c->ids[c->len] = id;
    c->dist[c->len] = d;
    c->len++;
    return 0;
}

/* distance of one code to one query, any nb (word-wise, then the byte tail) */
static inline unsigned hamming_one(const uint8_t *a, const uint8_t *b, size_t nb) {
    unsigned d = 0;
    size_t w = 0;
    for (; w + 8 <= nb; w += 8) {
        uint64_t x, y;
        memcpy(&x, a + w, 8);
        memcpy(&y, b + w, 8);
        d += (unsigned)__builtin_popcountll(x ^ y);
    }
    for (; w < nb; w++) d += (unsigned)__builtin_popcount((unsigned)(a[w] ^ b[w]));
    return d;
}

/* portable filter scan: push every item in [lo, hi) with distance <= t. target_clones: a popcnt build
 * is picked at load time on CPUs that have the instruction (the default build emulates it) */
#if defined(__x86_64__) && defined(__GNUC__)
#define HR_CLONES __attribute__((target_clones("popcnt", "default")))
#else
#define HR_CLONES
#endif

HR_CLONES static int scan_generic(const uint8_t *codes, size_t nb, size_t lo, size_t hi, const uint8_t *q,
                        unsigned t, cands_t *out) {
    if (nb == 8) { /* 64-bit codes (the default): a constant width lets the compiler unroll and inline */
        for (size_t i = lo; i < hi; i++) {
            unsigned d = hamming_one(codes + i * 8, q, 8);
            if (d <= t && cands_push(out, (uint32_t)i, (uint16_t)d)) return -1;
        }
        return 0;
    }
    for (size_t i = lo; i < hi; i++) {
        unsigned d = hamming_one(codes + i * nb, q, nb);
        if (d <= t && cands_push(out, (uint32_t)i, (uint16_t)d)) return -1;
    }
    return 0;
}

/* hist[d] += number of codes in [lo, hi) at distance d from q */
#define HR_HIST(codes, nb, lo, hi, q, hist)                                                              \
    do {                                                                                                   \
        if ((nb) == 8)                                                                                     \
            for (size_t i_ = (lo); i_ < (hi); i_++) (hist)[hamming_one((codes) + i_ * 8, (q), 8)]++;       \
        else                                                                                               \
            for (size_t i_ = (lo); i_ < (hi); i_++) (hist)[hamming_one((codes) + i_ * (nb), (q), (nb))]++; \
    } while (0)

#ifdef HR_X86
__attribute__((target("avx512f,avx512vpopcntdq"))) static int scan_avx512_64(const uint8_t *codes, size_t lo,
                                                                             size_t hi, const uint8_t *q,
                                                                             unsigned t, cands_t *out) {
    uint64_t qw;
    memcpy(&qw, q, 8);
    const __m512i qv = _mm512_set1_epi64((long long)qw);
    const __m512i tv = _mm512_set1_epi64((long long)t);
    size_t i = lo;
    for (; i + 8 <= hi; i += 8) {
        __m512i v = _mm512_loadu_si512((const void *)(codes + i * 8));
        __m512i p = _mm512_popcnt_epi64(_mm512_xor_si512(v, qv));
        __mmask8 m = _mm512_cmple_epu64_mask(p, tv);
        if (m) {
            uint64_t lanes[8];
            _mm512_storeu_si512((void *)lanes, p);
            while (m) {
                int j = __builtin_ctz(m);
                if (cands_push(out, (uint32_t)(i + j), (uint16_t)lanes[j])) return -1;
                m &= (__mmask8)(m - 1);
            }
        }
    }
    return scan_generic(codes, 8, i, hi, q, t, out);
}

__attribute__((target("avx512f,avx512vpopcntdq"))) static int scan_avx512_32(const uint8_t *codes, size_t lo,
                                                                             size_t hi, const uint8_t *q,
                                                                             unsigned t, cands_t *out) {
    uint32_t qw;
    memcpy(&qw, q, 4);
    const __m512i qv = _mm512_set1_epi32((int)qw);
    const __m512i tv = _mm512_set1_epi32((int)t);
    size_t i = lo;
    for (; i + 16 <= hi; i += 16) {
        __m512i v = _mm512_loadu_si512((const void *)(codes + i * 4));
        __m512i p = _mm512_popcnt_epi32(_mm512_xor_si512(v, qv));
        __mmask16 m = _mm512_cmple_epu32_mask(p, tv);
        if (m) {
            uint32_t lanes[16];
            _mm512_storeu_si512((void *)lanes, p);
            while (m) {
                int j = __builtin_ctz(m);
                if (cands_push(out, (uint32_t)(i + j), (uint16_t)lanes[j])) return -1;
                m &= (__mmask16)(m - 1);
            }
        }
    }
    return scan_generic(codes, 4, i, hi, q, t, out);
}
#endif

static int use_avx512_64 = 0;

static int scan(const uint8_t *codes, size_t nb, size_t lo, size_t hi, const uint8_t *q, unsigned t,
                cands_t *out) {
#ifdef HR_X86
    if (nb == 8 && use_avx512_64) return scan_avx512_64(codes, lo, hi, q, t, out);
    if (nb == 4 && use_avx512_64) return scan_avx512_32(codes, lo, hi, q, t, out);
#endif
    return scan_generic(codes, nb, lo, hi, q, t, out);
}

/* smallest t whose estimated count of items at distance <= t reaches `want` (from a sample) */
HR_CLONES static unsigned estimate_threshold(const uint8_t *codes, size_t n, size_t nb, const uint8_t *q, size_t k) {
    const unsigned maxd = (unsigned)(8 * nb);
    /* 64 runs of consecutive codes spread over the corpus: contiguous runs read whole cache lines (a stride
     * of one code per line would move 8x more memory for the same sample size). The sample is sized to
     * expect ~64 sampled codes under the threshold (2,048 to 16,384 codes): at 41k items and k = 500 that
     * is ~3,600 codes instead of 16,384, and the sampling error it leaves (~1/8) is well inside the 25%
     * margin below, so rescans stay rare. */
    const size_t runs = 64;
    double target = 64.0 * (double)n / (1.25 * (double)k + 64.0);
    size_t want_n = target < 2048 ? 2048 : (target > 16384 ? 16384 : (size_t)target);
    size_t run = want_n / runs;
    size_t sample = 0;
    uint32_t *hist = calloc(maxd + 1, sizeof(uint32_t));
    if (!hist) return maxd;
    if (n <= runs * run) {
        HR_HIST(codes, nb, 0, n, q, hist);
        sample = n;
    } else {
        size_t gap = n / runs;
        for (size_t r = 0; r < runs; r++) HR_HIST(codes, nb, r * gap, r * gap + run, q, hist);
        sample = runs * run;
    }
    /* aim at 1.25 k + 64 items: a sampling error rarely leaves fewer than k (which triggers a rescan) */
    double want = (1.25 * (double)k + 64.0) * (double)sample / (double)n;
    double cum = 0;
    unsigned t = maxd;
    for (unsigned d = 0; d <= maxd; d++) {
        cum += hist[d];
        if (cum >= want) {
            t = d;
            break;
        }
    }
    free(hist);
    return t;
}

/* exact threshold: the k-th smallest distance over all n items (one full histogram pass) */
HR_CLONES static unsigned exact_threshold(const uint8_t *codes, size_t n, size_t nb, const uint8_t *q, size_t k) {
    const unsigned maxd = (unsigned)(8 * nb);
    uint64_t *hist = calloc(maxd + 1, sizeof(uint64_t));
    if (!hist) return maxd;
    HR_HIST(codes, nb, 0, n, q, hist);
    uint64_t cum = 0;
    unsigned t = maxd;
    for (unsigned d = 0; d <= maxd; d++) {
        cum += hist[d];
        if (cum >= k) {
            t = d;
            break;
        }
    }
    free(hist);
    return t;
}

/* counting sort of the candidates by distance (stable: id order kept), first k into the outputs */
static int select_k(const cands_t *c, unsigned maxd, size_t k, int32_t *dist_out, int64_t *idx_out) {
    size_t *start = calloc(maxd + 2, sizeof(size_t));
    if (!start) return -1;
    for (size_t j = 0; j < c->len; j++) start[c->dist[j] + 1]++;
    for (unsigned d = 0; d <= maxd; d++) start[d + 1] += start[d];
    size_t filled = 0;
    for (size_t j = 0; j < c->len; j++) {
        size_t pos = start[c->dist[j]]++;
        if (pos < k) {
            dist_out[pos] = (int32_t)c->dist[j];
            idx_out[pos] = (int64_t)c->ids[j];
            filled++;
        }
    }
    free(start);
    return filled == k ? 0 : -2; /* fewer than k candidates: a bug, reported as RuntimeError */
}

/* Scan in blocks of codes that stay in L1/L2 while every query of the batch visits them. */
#define BLOCK 4096

static int topk_batch(const uint8_t *codes, size_t n, size_t nb, const uint8_t *queries, size_t nq, size_t k,
                      int32_t *dist_out, int64_t *idx_out) {
    const unsigned maxd = (unsigned)(8 * nb);
    int rc = 0;
    unsigned *thr = malloc(nq * sizeof(unsigned));
    cands_t *cs = calloc(nq, sizeof(cands_t));
    if (!thr || !cs) {
        rc = -1;
        goto done;
    }
    for (size_t qi = 0; qi < nq; qi++) thr[qi] = estimate_threshold(codes, n, nb, queries + qi * nb, k);
    for (size_t lo = 0; lo < n && rc == 0; lo += BLOCK) {
        size_t hi = lo + BLOCK < n ? lo + BLOCK : n;
        for (size_t qi = 0; qi < nq && rc == 0; qi++)
            rc = scan(codes, nb, lo, hi, queries + qi * nb, thr[qi], &cs[qi]);
    }
    for (size_t qi = 0; qi < nq && rc == 0; qi++) {
        if (cs[qi].len < k) { /* the estimate was too tight: rescan with the exact threshold */
            cs[qi].len = 0;
            unsigned t = exact_threshold(codes, n, nb, queries + qi * nb, k);
            rc = scan(codes, nb, 0, n, queries + qi * nb, t, &cs[qi]);
        }
        if (rc == 0) rc = select_k(&cs[qi], maxd, k, dist_out + qi * k, idx_out + qi * k);
    }
done:
    if (cs) {
        for (size_t qi = 0; qi < nq; qi++) {
            free(cs[qi].ids);
            free(cs[qi].dist);
        }
    }
    free(cs);
    free(thr);
    return rc;
}

/* ---- top-k with per-query exclusions (a user's seen items) ------------------------------------------------ */

static int in_sorted(const int64_t *a, size_t n, int64_t x) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (a[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && a[lo] == x;
}

/* Per query: the k nearest codes by (distance, item id) among the items NOT in its exclusion list
 * (excl[indptr[qi]:indptr[qi+1]], sorted ascending). Same answer as the top-(k + |excl|) with the excluded
 * ones removed and the first k survivors kept; slots left empty (fewer than k items remain) hold
 * (maxd + 1, -1). */
static int topk_excluding(const uint8_t *codes, size_t n, size_t nb, const uint8_t *queries, size_t nq, size_t k,
                          const int64_t *indptr, const int64_t *excl, int32_t *dist_out, int64_t *idx_out) {
    const unsigned maxd = (unsigned)(8 * nb);
    int rc = 0;
    cands_t c = {0};
    size_t cap = 0;
    int32_t *dt = NULL;
    int64_t *it = NULL;
    for (size_t qi = 0; qi < nq && rc == 0; qi++) {
        const int64_t *ex = excl + indptr[qi];
        size_t ne = (size_t)(indptr[qi + 1] - indptr[qi]);
        size_t kq = k + ne < n ? k + ne : n;
        if (kq > cap) {
            free(dt);
            free(it);
            dt = malloc(kq * sizeof(int32_t));
            it = malloc(kq * sizeof(int64_t));
            cap = kq;
            if (!dt || !it) {
                rc = -1;
                break;
            }
        }
        const uint8_t *q = queries + qi * nb;
        unsigned t = estimate_threshold(codes, n, nb, q, kq);
        c.len = 0;
        rc = scan(codes, nb, 0, n, q, t, &c);
        if (rc == 0 && c.len < kq) { /* the estimate was too tight: rescan with the exact threshold */
            c.len = 0;
            rc = scan(codes, nb, 0, n, q, exact_threshold(codes, n, nb, q, kq), &c);
        }
        if (rc == 0) rc = select_k(&c, maxd, kq, dt, it);
        if (rc) break;
        int32_t *d_out = dist_out + qi * k;
        int64_t *i_out = idx_out + qi * k;
        size_t out = 0;
        for (size_t j = 0; j < kq && out < k; j++) {
            if (ne && in_sorted(ex, ne, it[j])) continue;
            d_out[out] = dt[j];
            i_out[out] = it[j];
            out++;
        }
        for (; out < k; out++) {
            d_out[out] = (int32_t)(maxd + 1);
            i_out[out] = -1;
        }
    }
    free(c.ids);
    free(c.dist);
    free(dt);
    free(it);
    return rc;
}

/* ---- top-k restricted to ranges of a permuted code array (the probed lists of an IVF) ---------------- */

/* In-place quicksort of int64 (median of three, insertion sort for short runs): inline compares, several
 * times faster than qsort's callback for the few hundred to few thousand ids of one distance bucket */
static void sort_i64(int64_t *a, size_t n) {
    while (n > 16) {
        int64_t x = a[0], y = a[n / 2], z = a[n - 1];
        int64_t pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        size_t i = 0, j = n - 1;
        for (;;) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i >= j) break;
            int64_t t = a[i];
            a[i] = a[j];
            a[j] = t;
            i++;
            j--;
        }
        /* recurse into the smaller side, loop on the larger: stack depth stays O(log n) */
        size_t left = j + 1;
        if (left < n - left) {
            sort_i64(a, left);
            a += left;
            n -= left;
        } else {
            sort_i64(a + left, n - left);
            n = left;
        }
    }
    for (size_t i = 1; i < n; i++) {
        int64_t v = a[i];
        size_t j = i;
        for (; j > 0 && a[j - 1] > v; j--) a[j] = a[j - 1];
        a[j] = v;
    }
}

/* One query over the union of [starts[r], ends[r]) of `codes` (rows permuted; ids[pos] = item id).
 * Output: the min(k, total) nearest by (distance, item id), rest padded with (maxd + 1, -1). */
static int topk_ranges_one(const uint8_t *codes, size_t nb, const int64_t *ids, const uint8_t *q, size_t k,
                           const int64_t *starts, const int64_t *ends, size_t nr, int32_t *dist_out,
                           int64_t *idx_out) {
    const unsigned maxd = (unsigned)(8 * nb);
    size_t total = 0;
    for (size_t r = 0; r < nr; r++)
        if (ends[r] > starts[r]) total += (size_t)(ends[r] - starts[r]);
    for (size_t j = 0; j < k; j++) {
        dist_out[j] = (int32_t)(maxd + 1);
        idx_out[j] = -1;
    }
    size_t kk = k < total ? k : total;
    if (kk == 0) return 0;
    /* threshold from a strided sample of the probed codes, sized to expect ~64 sampled rows under it
     * (a bigger sample costs more than scanning a few probed lists outright) */
    uint64_t *hist = calloc(maxd + 1, sizeof(uint64_t));
    if (!hist) return -1;
    double target = 64.0 * (double)total / (1.25 * (double)kk + 64.0);
    size_t want_n = target < 1024 ? 1024 : (target > 16384 ? 16384 : (size_t)target);
    /* runs of 32 consecutive rows, evenly spaced over the concatenated ranges: whole cache lines */
    const int64_t run = 32;
    int64_t gap = total > want_n ? (int64_t)(total / (want_n / 32)) : 1;
    size_t sampled = 0;
    int64_t phase = 0; /* offset of the next run start into the current range */
    for (size_t r = 0; r < nr; r++) {
        if (ends[r] <= starts[r]) continue;
        int64_t i = starts[r] + phase;
        for (; i < ends[r]; i += gap) {
            int64_t stop = gap == 1 ? i + 1 : (i + run < ends[r] ? i + run : ends[r]);
            for (int64_t j = i; j < stop; j++) hist[hamming_one(codes + (size_t)j * nb, q, nb)]++;
            sampled += (size_t)(stop - i);
        }
        phase = i - ends[r];
    }
    double want = (1.25 * (double)kk + 64.0) * (double)sampled / (double)total;
    double cum = 0;
    unsigned t = maxd;
    for (unsigned d = 0; d <= maxd; d++) {
        cum += (double)hist[d];
        if (cum >= want) {
            t = d;
            break;
        }
    }
    cands_t c = {0};
    int rc = 0;
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
        c.len = 0;
        for (size_t r = 0; r < nr && rc == 0; r++)
            if (ends[r] > starts[r]) rc = scan(codes, nb, (size_t)starts[r], (size_t)ends[r], q, t, &c);
        if (rc || c.len >= kk) break;
        /* the estimate was too tight: exact threshold from a full histogram of the probed codes */
        memset(hist, 0, (maxd + 1) * sizeof(uint64_t));
        for (size_t r = 0; r < nr; r++)
            for (int64_t i = starts[r]; i < ends[r]; i++) hist[hamming_one(codes + (size_t)i * nb, q, nb)]++;
        uint64_t cnt = 0;
        t = maxd;
        for (unsigned d = 0; d <= maxd; d++) {
            cnt += hist[d];
            if (cnt >= kk) {
                t = d;
                break;
            }
        }
    }
    free(hist);
    if (rc == 0 && c.len < kk) rc = -2;
    if (rc == 0) {
        /* counting sort by distance, then item ids ascending inside each distance */
        size_t *start = calloc(maxd + 2, sizeof(size_t));
        int64_t *sorted = malloc(c.len * sizeof(int64_t));
        if (!start || !sorted) {
            rc = -1;
        } else {
            for (size_t j = 0; j < c.len; j++) start[c.dist[j] + 1]++;
            for (unsigned d = 0; d <= maxd; d++) start[d + 1] += start[d];
            size_t *fill = malloc((maxd + 1) * sizeof(size_t));
            if (!fill) {
                rc = -1;
            } else {
                memcpy(fill, start, (maxd + 1) * sizeof(size_t));
                for (size_t j = 0; j < c.len; j++) sorted[fill[c.dist[j]]++] = ids[c.ids[j]];
                free(fill);
                size_t out = 0;
                for (unsigned d = 0; d <= maxd && out < kk; d++) {
                    size_t lo = start[d], hi = start[d + 1];
                    if (hi == lo) continue;
                    sort_i64(sorted + lo, hi - lo);
                    for (size_t j = lo; j < hi && out < kk; j++, out++) {
                        dist_out[out] = (int32_t)d;
                        idx_out[out] = sorted[j];
                    }
                }
            }
        }
        free(start);
        free(sorted);
    }
    free(c.ids);
    free(c.dist);
    return rc;
}

static PyObject *py_topk_ranges(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer codes, ids, queries, starts, ends, dist, idx;
    Py_ssize_t nb, k, nr;
    if (!PyArg_ParseTuple(args, "y*ny*y*ny*y*nw*w*", &codes, &nb, &ids, &queries, &k, &starts, &ends, &nr,
                          &dist, &idx))
        return NULL;
    PyObject *result = NULL;
    size_t n = nb > 0 ? (size_t)codes.len / (size_t)nb : 0;
    size_t nq = nb > 0 ? (size_t)queries.len / (size_t)nb : 0;
    if (nb <= 0 || 8 * nb > 65535 || (size_t)codes.len != n * (size_t)nb || (size_t)ids.len != n * sizeof(int64_t) ||
        n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "codes must be whole rows of nb bytes with one int64 id per row");
    } else if (k < 1 || nr < 0 || (size_t)starts.len != nq * (size_t)nr * sizeof(int64_t) ||
               (size_t)ends.len != nq * (size_t)nr * sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "k >= 1 and nq * nr int64 range starts and ends are required");
    } else if ((size_t)dist.len != nq * (size_t)k * sizeof(int32_t) ||
               (size_t)idx.len != nq * (size_t)k * sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "output buffers must hold nq * k int32 distances and int64 ids");
    } else {
        const int64_t *st = (const int64_t *)starts.buf, *en = (const int64_t *)ends.buf;
        int bad = 0;
        for (size_t j = 0; j < nq * (size_t)nr; j++)
            if (st[j] < 0 || en[j] > (int64_t)n) bad = 1;
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "a range lies outside the code array");
        } else {
            int rc = 0;
            Py_BEGIN_ALLOW_THREADS for (size_t qi = 0; qi < nq && rc == 0; qi++) rc =
                topk_ranges_one((const uint8_t *)codes.buf, (size_t)nb, (const int64_t *)ids.buf,
                                (const uint8_t *)queries.buf + qi * (size_t)nb, (size_t)k, st + qi * (size_t)nr,
                                en + qi * (size_t)nr, (size_t)nr, (int32_t *)dist.buf + qi * (size_t)k,
                                (int64_t *)idx.buf + qi * (size_t)k);
            Py_END_ALLOW_THREADS if (rc == -1) PyErr_NoMemory();
            else if (rc) PyErr_SetString(PyExc_RuntimeError, "hamming topk_ranges: internal error");
            else {
                Py_INCREF(Py_None);
                result = Py_None;
            }
        }
    }
    PyBuffer_Release(&codes);
    PyBuffer_Release(&ids);
    PyBuffer_Release(&queries);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&ends);
    PyBuffer_Release(&dist);
    PyBuffer_Release(&idx);
    return result;
}

static PyObject *py_topk(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer codes, queries, dist, idx;
    Py_ssize_t nb, k;
    if (!PyArg_ParseTuple(args, "y*ny*nw*w*", &codes, &nb, &queries, &k, &dist, &idx)) return NULL;
    PyObject *result = NULL;
    size_t n = nb > 0 ? (size_t)codes.len / (size_t)nb : 0;
    size_t nq = nb > 0 ? (size_t)queries.len / (size_t)nb : 0;
    if (nb <= 0 || 8 * nb > 65535 || (size_t)codes.len != n * (size_t)nb ||
        (size_t)queries.len != nq * (size_t)nb) {
        PyErr_SetString(PyExc_ValueError, "codes and queries must be whole rows of nb bytes (1 <= 8 nb <= 65535)");
    } else if (k < 1 || (size_t)k > n || n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "k must be in [1, n] and n < 2^32");
    } else if ((size_t)dist.len != nq * (size_t)k * sizeof(int32_t) ||
               (size_t)idx.len != nq * (size_t)k * sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "output buffers must hold nq * k int32 distances and int64 ids");
    } else {
        int rc;
        Py_BEGIN_ALLOW_THREADS rc = topk_batch((const uint8_t *)codes.buf, n, (size_t)nb,
                                               (const uint8_t *)queries.buf, nq, (size_t)k,
                                               (int32_t *)dist.buf, (int64_t *)idx.buf);
        Py_END_ALLOW_THREADS if (rc == -1) PyErr_NoMemory();
        else if (rc) PyErr_SetString(PyExc_RuntimeError, "hamming topk: fewer than k candidates (internal error)");
        else {
            Py_INCREF(Py_None);
            result = Py_None;
        }
    }
    PyBuffer_Release(&codes);
    PyBuffer_Release(&queries);
    PyBuffer_Release(&dist);
    PyBuffer_Release(&idx);
    return result;
}

/* ---- re-rank scores: gather + dot product, fused ------------------------------------------------------- */

/* scores[r, j] = <z[r], item_z[cand[r, j]]> (float32, summed in dimension order), -inf where cand < 0.
 * The rows of item_z are fetched in candidate order, i.e. at random: prefetching the next block of
 * candidates overlaps their cache misses. Eight candidates are scored together: each one's sum is still
 * one chain of adds in dimension order (the same result as one candidate at a time), but eight
 * independent chains keep the FP units busy where a single chain waits on each add's latency (that wait
 * was most of the re-rank's time: 64 dependent adds per candidate). */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static void dots(const float *item_z, size_t dim, const int64_t *cand, const float *z, size_t m, size_t c,
                 float *out) {
    enum { B = 8 };
    for (size_t r = 0; r < m; r++) {
        const int64_t *cr = cand + r * c;
        const float *zr = z + r * dim;
        float *o = out + r * c;
        for (size_t u = 0; u < 2 * B && u < c; u++)
            if (cr[u] >= 0) {
                const char *p = (const char *)(item_z + (size_t)cr[u] * dim);
                for (size_t b = 0; b < dim * sizeof(float); b += 64) __builtin_prefetch(p + b);
            }
        size_t j = 0;
        for (; j + B <= c; j += B) {
            for (size_t u = 2 * B; u < 3 * B && j + u < c; u++)
                if (cr[j + u] >= 0) {
                    const char *p = (const char *)(item_z + (size_t)cr[j + u] * dim);
                    for (size_t b = 0; b < dim * sizeof(float); b += 64) __builtin_prefetch(p + b);
                }
            const float *p[B];
            for (size_t u = 0; u < B; u++) p[u] = item_z + (size_t)(cr[j + u] < 0 ? 0 : cr[j + u]) * dim;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f, a4 = 0.0f, a5 = 0.0f, a6 = 0.0f, a7 = 0.0f;
            for (size_t t = 0; t < dim; t++) {
                const float zt = zr[t];
                a0 += p[0][t] * zt;
                a1 += p[1][t] * zt;
                a2 += p[2][t] * zt;
                a3 += p[3][t] * zt;
                a4 += p[4][t] * zt;
                a5 += p[5][t] * zt;
                a6 += p[6][t] * zt;
                a7 += p[7][t] * zt;
            }
            const float acc[B] = {a0, a1, a2, a3, a4, a5, a6, a7};
            for (size_t u = 0; u < B; u++) o[j + u] = cr[j + u] < 0 ? -__builtin_inff() : acc[u];
        }
        for (; j < c; j++) {
            if (cr[j] < 0) {
                o[j] = -__builtin_inff();
                continue;
            }
            const float *row = item_z + (size_t)cr[j] * dim;
            float acc = 0.0f;
            for (size_t t = 0; t < dim; t++) acc += row[t] * zr[t];
            o[j] = acc;
        }
    }
}

static PyObject *py_dots(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer items, cand, z, out;
    Py_ssize_t dim;
    if (!PyArg_ParseTuple(args, "y*ny*y*w*", &items, &dim, &cand, &z, &out)) return NULL;
    PyObject *result = NULL;
    size_t n = dim > 0 ? (size_t)items.len / ((size_t)dim * sizeof(float)) : 0;
    size_t m = dim > 0 ? (size_t)z.len / ((size_t)dim * sizeof(float)) : 0;
    size_t c = m ? (size_t)cand.len / (m * sizeof(int64_t)) : 0;
    if (dim <= 0 || (size_t)items.len != n * (size_t)dim * sizeof(float) ||
        (size_t)z.len != m * (size_t)dim * sizeof(float) || (size_t)cand.len != m * c * sizeof(int64_t) ||
        (size_t)out.len != m * c * sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "dots: item_z [n, dim] f32, cand [m, c] i64, z [m, dim] f32, out [m, c] f32");
    } else {
        const int64_t *cp = (const int64_t *)cand.buf;
        int bad = 0;
        for (size_t j = 0; j < m * c; j++)
            if (cp[j] >= (int64_t)n) bad = 1;
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "dots: candidate id out of range");
        } else {
            Py_BEGIN_ALLOW_THREADS dots((const float *)items.buf, (size_t)dim, cp, (const float *)z.buf, m, c,
                                        (float *)out.buf);
            Py_END_ALLOW_THREADS Py_INCREF(Py_None);
            result = Py_None;
        }
    }
    PyBuffer_Release(&items);
    PyBuffer_Release(&cand);
    PyBuffer_Release(&z);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *py_topk_excluding(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer codes, queries, indptr, excl, dist, idx;
    Py_ssize_t nb, k;
    if (!PyArg_ParseTuple(args, "y*ny*ny*y*w*w*", &codes, &nb, &queries, &k, &indptr, &excl, &dist, &idx))
        return NULL;
    PyObject *result = NULL;
    size_t n = nb > 0 ? (size_t)codes.len / (size_t)nb : 0;
    size_t nq = nb > 0 ? (size_t)queries.len / (size_t)nb : 0;
    size_t nex = (size_t)excl.len / sizeof(int64_t);
    if (nb <= 0 || 8 * nb > 65535 || (size_t)codes.len != n * (size_t)nb ||
        (size_t)queries.len != nq * (size_t)nb) {
        PyErr_SetString(PyExc_ValueError, "codes and queries must be whole rows of nb bytes (1 <= 8 nb <= 65535)");
    } else if (k < 1 || (size_t)k > n || n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "k must be in [1, n] and n < 2^32");
    } else if ((size_t)indptr.len != (nq + 1) * sizeof(int64_t) || (size_t)excl.len != nex * sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "indptr must hold nq + 1 int64 offsets into the int64 exclusions");
    } else if ((size_t)dist.len != nq * (size_t)k * sizeof(int32_t) ||
               (size_t)idx.len != nq * (size_t)k * sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "output buffers must hold nq * k int32 distances and int64 ids");
    } else {
        const int64_t *ip = (const int64_t *)indptr.buf, *ex = (const int64_t *)excl.buf;
        int bad = ip[0] != 0 || ip[nq] != (int64_t)nex;
        for (size_t qi = 0; qi < nq && !bad; qi++) {
            if (ip[qi + 1] < ip[qi]) bad = 1;
            for (int64_t j = ip[qi] + 1; j < ip[qi + 1] && !bad; j++)
                if (ex[j] < ex[j - 1]) bad = 1;
        }
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "exclusions: indptr must be monotone from 0 to len(excl), each row sorted");
        } else {
            int rc;
            Py_BEGIN_ALLOW_THREADS rc = topk_excluding((const uint8_t *)codes.buf, n, (size_t)nb,
                                                       (const uint8_t *)queries.buf, nq, (size_t)k, ip, ex,
                                                       (int32_t *)dist.buf, (int64_t *)idx.buf);
            Py_END_ALLOW_THREADS if (rc == -1) PyErr_NoMemory();
            else if (rc) PyErr_SetString(PyExc_RuntimeError, "hamming topk_excluding: internal error");
            else {
                Py_INCREF(Py_None);
                result = Py_None;
            }
        }
    }
    PyBuffer_Release(&codes);
    PyBuffer_Release(&queries);
    PyBuffer_Release(&indptr);
    PyBuffer_Release(&excl);
    PyBuffer_Release(&dist);
    PyBuffer_Release(&idx);
    return result;
}

/* ---- re-rank: scores and top-k selection in one call ------------------------------------------------------- */

/* Order of re-ranked entries: score descending, then item id ascending; empty slots (cand < 0) last, in
 * position order; a NaN score sorts after every number (numpy's lexsort of (id, -score) does the same). */
typedef struct {
    float neg; /* -score (+inf for empty slots) */
    int64_t tie; /* item id (INT64_MAX for empty slots) */
    int64_t pos; /* position in the candidate row */
} rr_t;

static inline int rr_before(const rr_t *a, const rr_t *b) {
    int an = a->neg != a->neg, bn = b->neg != b->neg; /* NaN */
    if (an != bn) return bn;
    if (!an && a->neg != b->neg) return a->neg < b->neg;
    if (a->tie != b->tie) return a->tie < b->tie;
    return a->pos < b->pos;
}

/* max-heap by rr_before (the root is the entry that comes last) */
static void rr_sift_down(rr_t *h, size_t n, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && rr_before(&h[m], &h[l])) m = l;
        if (r < n && rr_before(&h[m], &h[r])) m = r;
        if (m == i) return;
        rr_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

/* rows of m candidates lists [m, c]: the first k (k <= c) by the order above, with their scores (computed
 * by dots(), so bit-identical to fastscan.dots) and positions */
static int rerank_topk(const float *item_z, size_t dim, const int64_t *cand, const float *z, size_t m, size_t c,
                       size_t k, float *score_out, int64_t *idx_out, int64_t *pos_out) {
    float *sc = malloc(c * sizeof(float));
    rr_t *h = malloc(k * sizeof(rr_t));
    if (!sc || !h) {
        free(sc);
        free(h);
        return -1;
    }
    for (size_t r = 0; r < m; r++) {
        const int64_t *cr = cand + r * c;
        dots(item_z, dim, cr, z + r * dim, 1, c, sc);
        size_t len = 0;
        for (size_t j = 0; j < c; j++) {
            rr_t e = {cr[j] < 0 ? __builtin_inff() : -sc[j], cr[j] < 0 ? INT64_MAX : cr[j], (int64_t)j};
            if (len < k) {
                h[len++] = e;
                if (len == k)
                    for (size_t i = k / 2; i-- > 0;) rr_sift_down(h, k, i);
            } else if (rr_before(&e, &h[0])) {
                h[0] = e;
                rr_sift_down(h, k, 0);
            }
        }
        /* heap sort: pop the last-ordered entry into the last free slot */
        if (len < k)
            for (size_t i = len / 2; i-- > 0;) rr_sift_down(h, len, i);
        for (size_t n = len; n > 0; n--) {
            rr_t e = h[0];
            h[0] = h[n - 1];
            rr_sift_down(h, n - 1, 0);
            size_t o = r * k + (n - 1);
            score_out[o] = sc[e.pos];
            idx_out[o] = cr[e.pos];
            pos_out[o] = e.pos;
        }
    }
    free(sc);
    free(h);
    return 0;
}

static PyObject *py_rerank(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer items, cand, z, sco, idx, pos;
    Py_ssize_t dim, k;
    if (!PyArg_ParseTuple(args, "y*ny*y*nw*w*w*", &items, &dim, &cand, &z, &k, &sco, &idx, &pos)) return NULL;
    PyObject *result = NULL;
    size_t n = dim > 0 ? (size_t)items.len / ((size_t)dim * sizeof(float)) : 0;
    size_t m = dim > 0 ? (size_t)z.len / ((size_t)dim * sizeof(float)) : 0;
    size_t c = m ? (size_t)cand.len / (m * sizeof(int64_t)) : 0;
    if (dim <= 0 || (size_t)items.len != n * (size_t)dim * sizeof(float) ||
        (size_t)z.len != m * (size_t)dim * sizeof(float) || (size_t)cand.len != m * c * sizeof(int64_t) ||
        k < 1 || (size_t)k > c || (size_t)sco.len != m * (size_t)k * sizeof(float) ||
        (size_t)idx.len != m * (size_t)k * sizeof(int64_t) || (size_t)pos.len != m * (size_t)k * sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError,
                        "rerank: item_z [n, dim] f32, cand [m, c] i64, z [m, dim] f32, 1 <= k <= c, outputs [m, k]");
    } else {
        const int64_t *cp = (const int64_t *)cand.buf;
        int bad = 0;
        for (size_t j = 0; j < m * c; j++)
            if (cp[j] >= (int64_t)n) bad = 1;
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "rerank: candidate id out of range");
        } else {
            int rc;
            Py_BEGIN_ALLOW_THREADS rc = rerank_topk((const float *)items.buf, (size_t)dim, cp, (const float *)z.buf, m,
                                                    c, (size_t)k, (float *)sco.buf, (int64_t *)idx.buf,
                                                    (int64_t *)pos.buf);
            Py_END_ALLOW_THREADS if (rc) PyErr_NoMemory();
            else {
                Py_INCREF(Py_None);
                result = Py_None;
            }
        }
    }
    PyBuffer_Release(&items);
    PyBuffer_Release(&cand);
    PyBuffer_Release(&z);
    PyBuffer_Release(&sco);
    PyBuffer_Release(&idx);
    PyBuffer_Release(&pos);
    return result;
}

/* ---- one user, both stages, Python lists out ----------------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* recommend_one(codes, nb, q, width, excl, item_z, dim, z, k, raw_ids) -> (items, scores, hamming,
 * recall_s, rerank_s): topk_excluding for one query (width nearest non-excluded codes), then rerank_topk of
 * those candidates (top min(k, width)); the answer's empty slots (fewer items than k remain) are dropped.
 * items are raw_ids[internal id] (a list of n objects), scores Python floats of the float32 scores,
 * hamming Python ints; recall_s and rerank_s are the two stages' wall times. The GIL is released for both
 * stages. The same answer as the Retriever's two stages on the same arrays. */
static PyObject *py_recommend_one(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer codes, q, excl, items, z;
    Py_ssize_t nb, width, dim, k;
    PyObject *raw;
    if (!PyArg_ParseTuple(args, "y*ny*ny*y*ny*nO!", &codes, &nb, &q, &width, &excl, &items, &dim, &z, &k,
                          &PyList_Type, &raw))
        return NULL;
    PyObject *result = NULL;
    size_t n = nb > 0 ? (size_t)codes.len / (size_t)nb : 0;
    size_t ne = (size_t)excl.len / sizeof(int64_t);
    size_t kk = (size_t)(k < width ? k : width);
    if (nb <= 0 || 8 * nb > 65535 || (size_t)codes.len != n * (size_t)nb || (size_t)q.len != (size_t)nb ||
        n > UINT32_MAX || width < 1 || (size_t)width > n || k < 1 || (size_t)excl.len != ne * sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "recommend_one: codes [n, nb], one query of nb bytes, 1 <= width <= n, k >= 1");
    } else if (dim <= 0 || (size_t)items.len != n * (size_t)dim * sizeof(float) ||
               (size_t)z.len != (size_t)dim * sizeof(float) || (size_t)PyList_GET_SIZE(raw) != n) {
        PyErr_SetString(PyExc_ValueError, "recommend_one: item_z [n, dim] f32, z [dim] f32, raw_ids of length n");
    } else {
        const int64_t *ex = (const int64_t *)excl.buf;
        int bad = 0;
        for (size_t j = 1; j < ne; j++)
            if (ex[j] < ex[j - 1]) bad = 1;
        int32_t *dist = malloc((size_t)width * sizeof(int32_t));
        int64_t *idx = malloc((size_t)width * sizeof(int64_t));
        float *sc = malloc(kk * sizeof(float));
        int64_t *top = malloc(kk * sizeof(int64_t)), *pos = malloc(kk * sizeof(int64_t));
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "recommend_one: the exclusions must be sorted");
        } else if (!dist || !idx || !sc || !top || !pos) {
            PyErr_NoMemory();
        } else {
            int64_t indptr[2] = {0, (int64_t)ne};
            int rc;
            double t0, t1, t2;
            Py_BEGIN_ALLOW_THREADS t0 = now_s();
            rc = topk_excluding((const uint8_t *)codes.buf, n, (size_t)nb, (const uint8_t *)q.buf, 1, (size_t)width,
                                indptr, ex, dist, idx);
            t1 = now_s();
            if (rc == 0)
                rc = rerank_topk((const float *)items.buf, (size_t)dim, idx, (const float *)z.buf, 1, (size_t)width,
                                 kk, sc, top, pos);
            t2 = now_s();
            Py_END_ALLOW_THREADS if (rc == -1) PyErr_NoMemory();
            else if (rc) PyErr_SetString(PyExc_RuntimeError, "hamming recommend_one: internal error");
            else {
                size_t m = 0;
                while (m < kk && top[m] >= 0) m++; /* empty slots come last */
                PyObject *li = PyList_New((Py_ssize_t)m), *ls = PyList_New((Py_ssize_t)m),
                         *lh = PyList_New((Py_ssize_t)m);
                int ok = li && ls && lh;
                for (size_t j = 0; j < m && ok; j++) {
                    PyObject *it = PyList_GET_ITEM(raw, (Py_ssize_t)top[j]);
                    Py_INCREF(it);
                    PyList_SET_ITEM(li, (Py_ssize_t)j, it);
                    PyObject *f = PyFloat_FromDouble((double)sc[j]);
                    PyObject *h = PyLong_FromLong((long)dist[pos[j]]);
                    if (!f || !h) {
                        Py_XDECREF(f);
                        Py_XDECREF(h);
                        ok = 0;
                        break;
                    }
                    PyList_SET_ITEM(ls, (Py_ssize_t)j, f);
                    PyList_SET_ITEM(lh, (Py_ssize_t)j, h);
                }
                PyObject *tr = ok ? PyFloat_FromDouble(t1 - t0) : NULL, *tk = ok ? PyFloat_FromDouble(t2 - t1) : NULL;
                result = tr && tk ? PyTuple_New(5) : NULL;
                if (result) {
                    PyTuple_SET_ITEM(result, 0, li);
                    PyTuple_SET_ITEM(result, 1, ls);
                    PyTuple_SET_ITEM(result, 2, lh);
                    PyTuple_SET_ITEM(result, 3, tr);
                    PyTuple_SET_ITEM(result, 4, tk);
                } else {
                    /* lists whose slots are not all set yet are still safe to release (NULL slots) */
                    Py_XDECREF(li);
                    Py_XDECREF(ls);
                    Py_XDECREF(lh);
                    Py_XDECREF(tr);
                    Py_XDECREF(tk);
                }
            }
        }
        free(dist);
        free(idx);
        free(sc);
        free(top);
        free(pos);
    }
    PyBuffer_Release(&codes);
    PyBuffer_Release(&q);
    PyBuffer_Release(&excl);
    PyBuffer_Release(&items);
    PyBuffer_Release(&z);
    return result;
}

/* the answer lists of one user from the re-rank outputs (m valid entries): raw ids, float scores, distances */
static PyObject *answer_tuple(size_t m, const int64_t *top, const float *sc, const int64_t *pos, const int32_t *dist,
                              PyObject *raw) {
    PyObject *li = PyList_New((Py_ssize_t)m), *ls = PyList_New((Py_ssize_t)m), *lh = PyList_New((Py_ssize_t)m);
    PyObject *t = li && ls && lh ? PyTuple_New(3) : NULL;
    if (!t) goto fail;
    for (size_t j = 0; j < m; j++) {
        PyObject *it = PyList_GET_ITEM(raw, (Py_ssize_t)top[j]);
        Py_INCREF(it);
        PyList_SET_ITEM(li, (Py_ssize_t)j, it);
        PyObject *f = PyFloat_FromDouble((double)sc[j]);
        if (!f) goto fail;
        PyList_SET_ITEM(ls, (Py_ssize_t)j, f);
        PyObject *h = PyLong_FromLong((long)dist[pos[j]]);
        if (!h) goto fail;
        PyList_SET_ITEM(lh, (Py_ssize_t)j, h);
    }
    PyTuple_SET_ITEM(t, 0, li);
    PyTuple_SET_ITEM(t, 1, ls);
    PyTuple_SET_ITEM(t, 2, lh);
    return t;
fail: /* lists with unset (NULL) slots are safe to release */
    Py_XDECREF(t);
    Py_XDECREF(li);
    Py_XDECREF(ls);
    Py_XDECREF(lh);
    return NULL;
}

/* recommend_many(codes, nb, user_codes, user_z, dim, users, width, seen_indptr, seen_indices, item_z, k, raw_ids)
 * -> ([(items, scores, hamming) per user], recall_s, rerank_s): recommend_one for each internal user id in
 * `users` (int64), its query code and z taken from user_codes [U, nb] / user_z [U, dim] and its exclusions
 * from the CSR rows seen_indptr [U + 1] / seen_indices (sorted per row; an empty seen_indptr = exclude
 * nothing). One call, GIL released while computing; the stage times are summed over the users. */
static PyObject *py_recommend_many(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer codes, ucodes, uz, users, sip, sidx, items;
    Py_ssize_t nb, dim, width, k;
    PyObject *raw;
    if (!PyArg_ParseTuple(args, "y*ny*y*ny*ny*y*y*nO!", &codes, &nb, &ucodes, &uz, &dim, &users, &width, &sip, &sidx,
                          &items, &k, &PyList_Type, &raw))
        return NULL;
    PyObject *result = NULL, *answers = NULL;
    size_t n = nb > 0 ? (size_t)codes.len / (size_t)nb : 0;
    size_t nu = nb > 0 ? (size_t)ucodes.len / (size_t)nb : 0;
    size_t m = (size_t)users.len / sizeof(int64_t);
    size_t nsi = (size_t)sidx.len / sizeof(int64_t);
    int use_seen = sip.len > 0;
    size_t kk = (size_t)(k < width ? k : width);
    int32_t *dist = NULL;
    int64_t *idx = NULL, *top = NULL, *pos = NULL;
    float *sc = NULL;
    const int64_t *ui = (const int64_t *)users.buf, *ip = (const int64_t *)sip.buf, *ex = (const int64_t *)sidx.buf;
    if (nb <= 0 || 8 * nb > 65535 || (size_t)codes.len != n * (size_t)nb || (size_t)ucodes.len != nu * (size_t)nb ||
        n > UINT32_MAX || width < 1 || (size_t)width > n || k < 1 || dim <= 0 ||
        (size_t)uz.len != nu * (size_t)dim * sizeof(float) || (size_t)items.len != n * (size_t)dim * sizeof(float) ||
        (size_t)users.len != m * sizeof(int64_t) || (size_t)PyList_GET_SIZE(raw) != n ||
        (use_seen && ((size_t)sip.len != (nu + 1) * sizeof(int64_t) || (size_t)sidx.len != nsi * sizeof(int64_t)))) {
        PyErr_SetString(PyExc_ValueError, "recommend_many: inconsistent shapes");
        goto done;
    }
    for (size_t r = 0; r < m; r++) {
        if (ui[r] < 0 || (size_t)ui[r] >= nu) {
            PyErr_SetString(PyExc_ValueError, "recommend_many: user id out of range");
            goto done;
        }
        if (use_seen) {
            int64_t a = ip[ui[r]], b = ip[ui[r] + 1];
            int bad = a < 0 || b < a || (size_t)b > nsi;
            for (int64_t j = a + 1; j < b && !bad; j++)
                if (ex[j] < ex[j - 1]) bad = 1;
            if (bad) {
                PyErr_SetString(PyExc_ValueError, "recommend_many: seen rows must be sorted CSR rows");
                goto done;
            }
        }
    }
    dist = malloc((m ? m : 1) * (size_t)width * sizeof(int32_t));
    idx = malloc((m ? m : 1) * (size_t)width * sizeof(int64_t));
    sc = malloc((m ? m : 1) * kk * sizeof(float));
    top = malloc((m ? m : 1) * kk * sizeof(int64_t));
    pos = malloc((m ? m : 1) * kk * sizeof(int64_t));
    if (!dist || !idx || !sc || !top || !pos) {
        PyErr_NoMemory();
        goto done;
    }
    int rc = 0;
    double t_recall = 0, t_rerank = 0;
    Py_BEGIN_ALLOW_THREADS for (size_t r = 0; r < m && rc == 0; r++) {
        int64_t u = ui[r];
        int64_t indptr[2] = {0, use_seen ? ip[u + 1] - ip[u] : 0};
        double t0 = now_s();
        rc = topk_excluding((const uint8_t *)codes.buf, n, (size_t)nb, (const uint8_t *)ucodes.buf + (size_t)u * (size_t)nb,
                            1, (size_t)width, indptr, use_seen ? ex + ip[u] : ex, dist + r * (size_t)width,
                            idx + r * (size_t)width);
        double t1 = now_s();
        if (rc == 0)
            rc = rerank_topk((const float *)items.buf, (size_t)dim, idx + r * (size_t)width,
                             (const float *)uz.buf + (size_t)u * (size_t)dim, 1, (size_t)width, kk, sc + r * kk,
                             top + r * kk, pos + r * kk);
        t_recall += t1 - t0;
        t_rerank += now_s() - t1;
    }
    Py_END_ALLOW_THREADS if (rc == -1) {
        PyErr_NoMemory();
        goto done;
    }
    if (rc) {
        PyErr_SetString(PyExc_RuntimeError, "hamming recommend_many: internal error");
        goto done;
    }
    answers = PyList_New((Py_ssize_t)m);
    if (!answers) goto done;
    for (size_t r = 0; r < m; r++) {
        size_t v = 0;
        while (v < kk && top[r * kk + v] >= 0) v++; /* empty slots come last */
        PyObject *a = answer_tuple(v, top + r * kk, sc + r * kk, pos + r * kk, dist + r * (size_t)width, raw);
        if (!a) goto done;
        PyList_SET_ITEM(answers, (Py_ssize_t)r, a);
    }
    result = Py_BuildValue("(Odd)", answers, t_recall, t_rerank);
done:
    Py_XDECREF(answers);
    free(dist);
    free(idx);
    free(sc);
    free(top);
    free(pos);
    PyBuffer_Release(&codes);
    PyBuffer_Release(&ucodes);
    PyBuffer_Release(&uz);
    PyBuffer_Release(&users);
    PyBuffer_Release(&sip);
    PyBuffer_Release(&sidx);
    PyBuffer_Release(&items);
    return result;
}

static PyObject *py_kernel(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyUnicode_FromString(use_avx512_64 ? "avx512-vpopcntdq (32- and 64-bit codes) + portable" : "portable");
}

static PyMethodDef methods[] = {
    {"topk", py_topk, METH_VARARGS,
     "topk(codes, nb, queries, k, dist_out, idx_out): exact Hamming top-k, ties by item id."},
    {"topk_ranges", py_topk_ranges, METH_VARARGS,
     "topk_ranges(codes, nb, ids, queries, k, starts, ends, nr, dist_out, idx_out): exact top-k over ranges."},
    {"dots", py_dots, METH_VARARGS, "dots(item_z, dim, cand, z, out): re-rank scores, gather + dot fused."},
    {"topk_excluding", py_topk_excluding, METH_VARARGS,
     "topk_excluding(codes, nb, queries, k, indptr, excl, dist_out, idx_out): exact top-k without excluded ids."},
    {"recommend_many", py_recommend_many, METH_VARARGS,
     "recommend_many(codes, nb, user_codes, user_z, dim, users, width, seen_indptr, seen_indices, item_z, k, raw):"
     " recommend_one per internal user id."},
    {"recommend_one", py_recommend_one, METH_VARARGS,
     "recommend_one(codes, nb, q, width, excl, item_z, dim, z, k, raw_ids): both stages for one user, as lists."},
    {"rerank", py_rerank, METH_VARARGS,
     "rerank(item_z, dim, cand, z, k, score_out, idx_out, pos_out): scores + top-k by (score desc, id asc)."},
    {"kernel", py_kernel, METH_NOARGS, "kernel(): which scan kernel this CPU uses."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hamming", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__hamming(void) {
#ifdef HR_X86
    __builtin_cpu_init();
    use_avx512_64 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
#endif
    return PyModule_Create(&module);
}
