/* recsys._scan: the engine's exact single-query search from int8 codes (recsys/retrieval/int8.py).

   scan(codes, scales, columns, query, q_max, out[, portable]) scales the float32 query (d,) by the item
   matrix's column scales c, rounds it to int16, Q = rint(query * c / t) with t = max|query * c| / q_max
   (a float32), and sets, for every item i,

       out[i] = (scales[i] * sum_j Q[j] * codes[i, j]) * t

   the inner product of the query t Q / c with the item c * scales[i] * codes[i] (both as stored). It
   returns (t, |query|, |query - t Q / c|, |t Q / c|) (Euclidean norms, in double), or None for a zero or
   non-finite query (then nothing is written). codes: int8, C-contiguous (n, dp), dp a multiple of 16 and
   >= d (zero padded); scales and out: float32 (n,); columns: float32 (d,), positive. The sums are exact in
   int32: q_max must be at most (2^31 - 1) / (127 dp), which is checked. The GIL is released while scanning.
   With portable true the plain C loop runs even where the CPU has AVX2 (tests compare the two); `kernel`
   names the loop used by default.

   topk(codes, scales, columns, errors, vectors, query, q_max, excluded, k, bounds, limit, out_idx, out_val)
   is the whole of Int8Items.topk (the proof is in recsys/retrieval/int8.py): the scan, excluded items (int32 or
   int64 indices) set to -inf, the cut G - 2C from the k-th largest of 64 interleaved group maxima of
   a - |q| e, the candidates i with a_i + |q| e_i >= cut, each scored again from vectors (float32 (n, d)) in
   double precision, and the k best of them (ties by index) written to out_idx (int64 (k,)) and out_val
   (their scores rounded to float32 (k,)). errors: float32 (n,), e_i rounded up; bounds: (max |w_i|,
   max |v_i|, max e_i). Returns k, or None where it cannot decide (a zero or non-finite query, fewer than k
   items left, more than limit candidates).
   With offsets (float32 (n,)), slack (double) and full (float32 (D,)), the codes hold only some of the
   vectors' D columns (the rest are scored by the caller, sparse): a_i + offsets[i] stands for the item's
   score, within slack more than the codes' own bound, and candidates are scored again from vectors (n, D)
   and the full query.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define RECSYS_AVX2 1
#include <immintrin.h>

/* four rows at a time: 16 codes widened to int16, multiplied and pair-summed into int32 lanes (vpmaddwd) */
__attribute__((target("avx2")))
static void scan_avx2(const int8_t *codes, const float *scales, const int16_t *q, Py_ssize_t n,
                      Py_ssize_t dp, float t, float *out) {
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const int8_t *r0 = codes + i * dp, *r1 = r0 + dp, *r2 = r1 + dp, *r3 = r2 + dp;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (Py_ssize_t j = 0; j < dp; j += 16) {
            __m256i qq = _mm256_loadu_si256((const __m256i *)(q + j));
#define RECSYS_ROW(acc, row) acc = _mm256_add_epi32(acc, _mm256_madd_epi16( \
                _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)((row) + j))), qq))
            RECSYS_ROW(a0, r0); RECSYS_ROW(a1, r1); RECSYS_ROW(a2, r2); RECSYS_ROW(a3, r3);
#undef RECSYS_ROW
        }
        __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        __m128 scaled = _mm_mul_ps(_mm_cvtepi32_ps(s), _mm_loadu_ps(scales + i));
        _mm_storeu_ps(out + i, _mm_mul_ps(scaled, _mm_set1_ps(t)));
    }
    for (; i < n; i++) {
        int32_t acc = 0;
        for (Py_ssize_t j = 0; j < dp; j++) acc += (int32_t)codes[i * dp + j] * q[j];
        out[i] = (scales[i] * (float)acc) * t;
    }
}
#endif

static void scan_portable(const int8_t *codes, const float *scales, const int16_t *q, Py_ssize_t n,
                          Py_ssize_t dp, float t, float *out) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const int8_t *row = codes + i * dp;
        int32_t acc = 0;
        for (Py_ssize_t j = 0; j < dp; j++) acc += (int32_t)row[j] * q[j];
        out[i] = (scales[i] * (float)acc) * t;
    }
}

static int use_avx2 = 0;

static void scan_rows(const int8_t *codes, const float *scales, const int16_t *q, Py_ssize_t n, Py_ssize_t dp,
                      float t, float *out, int portable) {
#ifdef RECSYS_AVX2
    if (use_avx2 && !portable) {
        scan_avx2(codes, scales, q, n, dp, t, out);
        return;
    }
#endif
    (void)portable;
    scan_portable(codes, scales, q, n, dp, t, out);
}

static int get(PyObject *obj, Py_buffer *view, const char *name, const char *format, Py_ssize_t itemsize,
               int ndim, int writable) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    if (view->ndim != ndim || view->itemsize != itemsize || view->format == NULL ||
        (format != NULL && strcmp(view->format, format) != 0)) {
        PyErr_Format(PyExc_ValueError, "scan: '%s' must be a %d-d C-contiguous array of format '%s'", name,
                     ndim, format != NULL ? format : "int64");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* The query, scaled by the columns and rounded to int16 (q, dp entries, zero padded); sets t and the norms
   |query|, |query - t q / c|, |t q / c|. Returns 0 for a zero or non-finite query. */
static int round_query(const float *qf, const float *cf, Py_ssize_t d, long q_max, int16_t *q, float *t,
                       double norms[3]) {
    double peak = 0.0;
    for (Py_ssize_t j = 0; j < d; j++) {
        double a = fabs((double)qf[j] * (double)cf[j]);
        if (!(a <= DBL_MAX)) return 0;  /* inf or nan */
        if (a > peak) peak = a;
    }
    if (!(peak > 0.0 && peak / (double)q_max <= FLT_MAX)) return 0;
    *t = (float)(peak / (double)q_max);
    double norm = 0.0, resid = 0.0, stored = 0.0;
    for (Py_ssize_t j = 0; j < d; j++) {
        double r = nearbyint((double)qf[j] * (double)cf[j] / (double)*t);
        if (r > (double)q_max) r = (double)q_max;
        if (r < -(double)q_max) r = -(double)q_max;
        q[j] = (int16_t)r;
        double x = qf[j], y = (double)*t * r / (double)cf[j];
        norm += x * x;
        resid += (x - y) * (x - y);
        stored += y * y;
    }
    norms[0] = sqrt(norm);
    norms[1] = sqrt(resid);
    norms[2] = sqrt(stored);
    return 1;
}

/* Checks shared by scan and topk; 0 (with an exception set) when the arguments do not fit. */
static int check(Py_buffer *codes, Py_buffer *scales, Py_buffer *columns, Py_buffer *query, Py_ssize_t n_out,
                 long q_max) {
    Py_ssize_t n = codes->shape[0], dp = codes->shape[1], d = query->shape[0];
    if (dp % 16 != 0 || d > dp || scales->shape[0] != n || columns->shape[0] != d || n_out != n) {
        PyErr_Format(PyExc_ValueError, "scan: shapes do not fit: codes (%zd, %zd) (columns a multiple of 16), "
                     "scales (%zd,), columns (%zd,), query (%zd,) (at most the codes' columns), out (%zd,)",
                     n, dp, scales->shape[0], columns->shape[0], d, n_out);
        return 0;
    }
    if (q_max < 1 || q_max > 32767 || (double)q_max * 127.0 * (double)dp > 2147483647.0) {
        PyErr_Format(PyExc_ValueError, "scan: q_max must be in 1..32767 and at most (2^31 - 1) / (127 * %zd). "
                     "Got %ld.", dp, q_max);
        return 0;
    }
    return 1;
}

/* What scan and topk both read: the codes, their scales and column scales, the query, and the query
   rounded to int16 (q, with t and the norms round_query sets). */
typedef struct {
    Py_buffer codes, scales, columns, query;
    int16_t *q;
    float t;
    double norms[3];
} Inputs;

static void close_inputs(Inputs *in, int n_open) {
    PyMem_Free(in->q);
    Py_buffer *views[] = {&in->codes, &in->scales, &in->columns, &in->query};
    for (int i = 0; i < n_open; i++) PyBuffer_Release(views[i]);
}

/* Opens the four arrays, checks them (n_out: the length of the caller's output) and allocates q; 0 (with an
   exception set and nothing left open) on failure. */
static int open_inputs(Inputs *in, PyObject *codes, PyObject *scales, PyObject *columns, PyObject *query,
                       long q_max, const Py_ssize_t *n_out) {
    in->q = NULL;
    if (get(codes, &in->codes, "codes", "b", 1, 2, 0) < 0) return 0;
    if (get(scales, &in->scales, "scales", "f", 4, 1, 0) < 0) return close_inputs(in, 1), 0;
    if (get(columns, &in->columns, "columns", "f", 4, 1, 0) < 0) return close_inputs(in, 2), 0;
    if (get(query, &in->query, "query", "f", 4, 1, 0) < 0) return close_inputs(in, 3), 0;
    if (!check(&in->codes, &in->scales, &in->columns, &in->query, n_out ? *n_out : in->codes.shape[0], q_max))
        return close_inputs(in, 4), 0;
    in->q = PyMem_Calloc((size_t)in->codes.shape[1], sizeof(int16_t));
    if (in->q == NULL) return PyErr_NoMemory(), close_inputs(in, 4), 0;
    return 1;
}

static PyObject *scan(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *codes_obj, *scales_obj, *columns_obj, *query_obj, *out_obj, *result = NULL;
    long q_max;
    int portable = 0;
    if (!PyArg_ParseTuple(args, "OOOOlO|p:scan", &codes_obj, &scales_obj, &columns_obj, &query_obj, &q_max,
                          &out_obj, &portable))
        return NULL;
    Py_buffer out;
    if (get(out_obj, &out, "out", "f", 4, 1, 1) < 0) return NULL;
    Inputs in;
    if (open_inputs(&in, codes_obj, scales_obj, columns_obj, query_obj, q_max, &out.shape[0])) {
        if (!round_query(in.query.buf, in.columns.buf, in.query.shape[0], q_max, in.q, &in.t, in.norms)) {
            Py_INCREF(Py_None);
            result = Py_None;
        } else {
            Py_BEGIN_ALLOW_THREADS
            scan_rows(in.codes.buf, in.scales.buf, in.q, in.codes.shape[0], in.codes.shape[1], in.t, out.buf,
                      portable);
            Py_END_ALLOW_THREADS
            result = Py_BuildValue("(dddd)", (double)in.t, in.norms[0], in.norms[1], in.norms[2]);
        }
        close_inputs(&in, 4);
    }
    PyBuffer_Release(&out);
    return result;
}

/* The e-th index of a 1-d int32 or int64 array. */
static Py_ssize_t index_at(const Py_buffer *indices, Py_ssize_t e) {
    return indices->itemsize == 4 ? (Py_ssize_t)((const int32_t *)indices->buf)[e]
                                  : (Py_ssize_t)((const int64_t *)indices->buf)[e];
}

/* The k-th largest of x[0..n) (1 <= k <= n), by quickselect; x is reordered. */
static float kth_largest(float *x, Py_ssize_t n, Py_ssize_t k) {
    Py_ssize_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = x[lo + (hi - lo) / 2];
        Py_ssize_t i = lo, j = hi;
        while (i <= j) {
            while (x[i] > pivot) i++;
            while (x[j] < pivot) j--;
            if (i <= j) {
                float tmp = x[i];
                x[i] = x[j];
                x[j] = tmp;
                i++;
                j--;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return x[want];
    }
    return x[want];
}

/* A candidate scored again: its score in double precision and its index. */
typedef struct {
    double score;
    Py_ssize_t index;
} Scored;

/* Best first; equal scores by index. */
static int by_score(const void *a, const void *b) {
    const Scored *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? 1 : -1;
    return (x->index > y->index) - (x->index < y->index);
}

/* The inner product of a float32 row with the query, in double precision: eight partial sums in a fixed
   order, so an item scores the same wherever it sits (equal items tie). */
static double dot(const float *v, const float *q, Py_ssize_t d) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    Py_ssize_t j = 0;
    for (; j + 8 <= d; j += 8)
        for (int l = 0; l < 8; l++) acc[l] += (double)v[j + l] * (double)q[j + l];
    for (; j < d; j++) acc[0] += (double)v[j] * (double)q[j];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static PyObject *topk(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *codes_obj, *scales_obj, *columns_obj, *errors_obj, *vectors_obj, *query_obj, *excluded_obj;
    PyObject *idx_obj, *val_obj, *offsets_obj = Py_None, *full_obj = Py_None, *result = NULL;
    long q_max;
    Py_ssize_t k, limit;
    double max_stored, max_norm, max_error, slack = 0.0;
    if (!PyArg_ParseTuple(args, "OOOOOOlOn(ddd)nOO|OdO:topk", &codes_obj, &scales_obj, &columns_obj, &errors_obj,
                          &vectors_obj, &query_obj, &q_max, &excluded_obj, &k, &max_stored, &max_norm,
                          &max_error, &limit, &idx_obj, &val_obj, &offsets_obj, &slack, &full_obj))
        return NULL;
    if ((offsets_obj == Py_None) != (full_obj == Py_None) || !(slack >= 0.0)) {
        PyErr_SetString(PyExc_ValueError, "topk: pass offsets and full together (or neither), slack >= 0");
        return NULL;
    }
    Py_buffer errors, vectors, excluded, out_idx, out_val, offsets = {0}, full = {0};
    Inputs in;
    float *approx = NULL, *select = NULL;
    Scored *scored = NULL;
    if (!open_inputs(&in, codes_obj, scales_obj, columns_obj, query_obj, q_max, NULL)) return NULL;
    if (get(errors_obj, &errors, "errors", "f", 4, 1, 0) < 0) goto release_inputs;
    if (get(vectors_obj, &vectors, "vectors", "f", 4, 2, 0) < 0) goto release_errors;
    if (PyObject_GetBuffer(excluded_obj, &excluded, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto release_vectors;
    if (excluded.ndim != 1 || !(excluded.itemsize == 4 || excluded.itemsize == 8) || excluded.format == NULL ||
        excluded.format[0] == '\0' || strchr("ilq", excluded.format[0]) == NULL) {
        PyErr_SetString(PyExc_ValueError, "topk: 'excluded' must be a 1-d array of int32 or int64 indices");
        goto release_excluded;
    }
    if (get(idx_obj, &out_idx, "out_idx", NULL, 8, 1, 1) < 0) goto release_excluded;
    if (out_idx.format[0] == '\0' || strchr("lq", out_idx.format[0]) == NULL) {
        PyErr_SetString(PyExc_ValueError, "topk: 'out_idx' must be a 1-d int64 array");
        goto release_idx;
    }
    if (get(val_obj, &out_val, "out_val", "f", 4, 1, 1) < 0) goto release_idx;
    if (offsets_obj != Py_None) {
        if (get(offsets_obj, &offsets, "offsets", "f", 4, 1, 0) < 0) goto release_val;
        if (get(full_obj, &full, "full", "f", 4, 1, 0) < 0) goto release_offsets;
    }
    Py_ssize_t n = in.codes.shape[0], d = in.query.shape[0], n_excluded = excluded.shape[0];
    Py_ssize_t d_full = offsets.buf != NULL ? full.shape[0] : d;  /* the columns candidates are scored on */
    if (errors.shape[0] != n || vectors.shape[0] != n || vectors.shape[1] != d_full || k < 1 || k >= n ||
        limit < k || out_idx.shape[0] != k || out_val.shape[0] != k ||
        (offsets.buf != NULL && offsets.shape[0] != n)) {
        PyErr_Format(PyExc_ValueError, "topk: errors (%zd,), offsets and vectors (%zd, %zd) must match the codes' "
                     "%zd rows and the query's %zd columns, k (%zd) must be in 1..%zd, limit (%zd) at least k, "
                     "out_idx (%zd,) and out_val (%zd,) k long", errors.shape[0], vectors.shape[0],
                     vectors.shape[1], n, d_full, k, n - 1, limit, out_idx.shape[0], out_val.shape[0]);
        goto release_full;
    }
    for (Py_ssize_t e = 0; e < n_excluded; e++) {
        Py_ssize_t i = index_at(&excluded, e);
        if (i < 0 || i >= n) {
            PyErr_Format(PyExc_ValueError, "topk: excluded index %zd is outside 0..%zd", i, n - 1);
            goto release_full;
        }
    }
    if (limit > n) limit = n;  /* there are no more candidates than items */
    Py_ssize_t width = n / 64, n_select = k < width ? width : n;
    approx = PyMem_Malloc((size_t)n * sizeof(float));
    select = PyMem_Malloc((size_t)n_select * sizeof(float));
    scored = PyMem_Malloc((size_t)limit * sizeof(Scored));
    if (approx == NULL || select == NULL || scored == NULL) {
        PyErr_NoMemory();
        goto release_memory;
    }
    if (!round_query(in.query.buf, in.columns.buf, d, q_max, in.q, &in.t, in.norms)) {
        Py_INCREF(Py_None);
        result = Py_None;
        goto release_memory;
    }
    const double *norms = in.norms;
    const float *err = errors.buf, *vf = vectors.buf, *qf = offsets.buf != NULL ? full.buf : in.query.buf;
    const float *off = offsets.buf;
    Py_ssize_t count = 0;
    int decided = 1;
    Py_BEGIN_ALLOW_THREADS
    scan_rows(in.codes.buf, in.scales.buf, in.q, n, in.codes.shape[1], in.t, approx, 0);
    if (off != NULL)
        for (Py_ssize_t i = 0; i < n; i++) approx[i] += off[i];
    for (Py_ssize_t e = 0; e < n_excluded; e++) {  /* checked above; read again without the GIL */
        Py_ssize_t i = index_at(&excluded, e);
        if (i >= 0 && i < n) approx[i] = -INFINITY;
    }
    const float spread = (float)norms[0];
    if (k < width) {  /* group g holds items g, g + width, ..., g + 63 width */
        for (Py_ssize_t g = 0; g < width; g++) select[g] = -INFINITY;
        for (Py_ssize_t r = 0; r < 64; r++)
            for (Py_ssize_t g = 0; g < width; g++) {
                float low = approx[r * width + g] - spread * err[r * width + g];
                if (low > select[g]) select[g] = low;
            }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) select[i] = approx[i] - spread * err[i];
    }
    float kth = kth_largest(select, n_select, k);
    if (!(kth > -INFINITY)) {
        decided = 0;  /* fewer than k items left (or groups holding one) */
    } else {
        const double dn = (double)d * 0x1p-24;
        const double bound = (1 + 0x1p-8) * (norms[1] * max_stored + dn / (1 - dn) * norms[0] * max_norm
                                            + 8 * 0x1p-24 * (norms[2] * max_stored + norms[0] * max_error)) + slack;
        const float cut = nextafterf((float)((double)kth - 2 * bound), -INFINITY);
        /* the proof gives k candidates or more from a finite cut; anything else (a bound that overflowed)
           is declined rather than answered */
        decided = isfinite(bound) && cut > -INFINITY;
        for (Py_ssize_t i = 0; i < n && decided; i++) {
            if (approx[i] + spread * err[i] >= cut) {
                if (count == limit) decided = 0;
                else scored[count++] = (Scored){dot(vf + i * d_full, qf, d_full), i};
            }
        }
        if (count < k) decided = 0;
    }
    if (decided) {
        qsort(scored, (size_t)count, sizeof(Scored), by_score);
        int64_t *idx = out_idx.buf;
        float *val = out_val.buf;
        for (Py_ssize_t r = 0; r < k; r++) {
            idx[r] = scored[r].index;
            val[r] = (float)scored[r].score;
        }
    }
    Py_END_ALLOW_THREADS
    if (decided) {
        result = PyLong_FromSsize_t(k);
    } else {
        Py_INCREF(Py_None);
        result = Py_None;
    }
release_memory:
    PyMem_Free(approx);
    PyMem_Free(select);
    PyMem_Free(scored);
release_full:
    if (full.buf != NULL) PyBuffer_Release(&full);
release_offsets:
    if (offsets.buf != NULL) PyBuffer_Release(&offsets);
release_val:
    PyBuffer_Release(&out_val);
release_idx:
    PyBuffer_Release(&out_idx);
release_excluded:
    PyBuffer_Release(&excluded);
release_vectors:
    PyBuffer_Release(&vectors);
release_errors:
    PyBuffer_Release(&errors);
release_inputs:
    close_inputs(&in, 4);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(codes, scales, columns, query, q_max, out[, portable]) -> (t, |q|, |q - tQ/c|, |tQ/c|) or None: "
     "out[i] = scales[i] * t * sum_j Q[j] codes[i, j] with Q = rint(query * columns / t) (int16)."},
    {"topk", topk, METH_VARARGS,
     "topk(codes, scales, columns, errors, vectors, query, q_max, excluded, k, bounds, limit, out_idx, out_val"
     "[, offsets, slack, full]) -> k or None: Int8Items.topk's answer, written to out_idx and out_val (see recsys/retrieval/int8.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__scan(void) {
#ifdef RECSYS_AVX2
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2");
#endif
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "kernel", use_avx2 ? "avx2" : "portable") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
