/* recsys._scan: the first pass of the engine's exact single-query search (recsys/quantized.py).

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
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
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

static int get(PyObject *obj, Py_buffer *view, const char *name, const char *format, Py_ssize_t itemsize,
               int ndim, int writable) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    if (view->ndim != ndim || view->itemsize != itemsize || view->format == NULL ||
        strcmp(view->format, format) != 0) {
        PyErr_Format(PyExc_ValueError, "scan: '%s' must be a %d-d C-contiguous array of format '%s'", name,
                     ndim, format);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *scan(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *codes_obj, *scales_obj, *columns_obj, *query_obj, *out_obj, *result = NULL;
    long q_max;
    int portable = 0;
    if (!PyArg_ParseTuple(args, "OOOOlO|p:scan", &codes_obj, &scales_obj, &columns_obj, &query_obj, &q_max,
                          &out_obj, &portable))
        return NULL;
    Py_buffer codes, scales, columns, query, out;
    if (get(codes_obj, &codes, "codes", "b", 1, 2, 0) < 0) return NULL;
    if (get(scales_obj, &scales, "scales", "f", 4, 1, 0) < 0) goto release_codes;
    if (get(columns_obj, &columns, "columns", "f", 4, 1, 0) < 0) goto release_scales;
    if (get(query_obj, &query, "query", "f", 4, 1, 0) < 0) goto release_columns;
    if (get(out_obj, &out, "out", "f", 4, 1, 1) < 0) goto release_query;
    Py_ssize_t n = codes.shape[0], dp = codes.shape[1], d = query.shape[0];
    if (dp % 16 != 0 || d > dp || scales.shape[0] != n || columns.shape[0] != d || out.shape[0] != n) {
        PyErr_Format(PyExc_ValueError, "scan: shapes do not fit: codes (%zd, %zd) (columns a multiple of 16), "
                     "scales (%zd,), columns (%zd,), query (%zd,) (at most the codes' columns), out (%zd,)",
                     n, dp, scales.shape[0], columns.shape[0], d, out.shape[0]);
        goto release_out;
    }
    if (q_max < 1 || q_max > 32767 || (double)q_max * 127.0 * (double)dp > 2147483647.0) {
        PyErr_Format(PyExc_ValueError, "scan: q_max must be in 1..32767 and at most (2^31 - 1) / (127 * %zd). "
                     "Got %ld.", dp, q_max);
        goto release_out;
    }
    const float *qf = query.buf, *cf = columns.buf;
    double peak = 0.0;
    for (Py_ssize_t j = 0; j < d; j++) {
        double a = fabs((double)qf[j] * (double)cf[j]);
        if (!(a <= DBL_MAX)) {  /* inf or nan */
            peak = NAN;
            break;
        }
        if (a > peak) peak = a;
    }
    if (!(peak > 0.0 && peak / (double)q_max <= FLT_MAX)) {
        Py_INCREF(Py_None);
        result = Py_None;
        goto release_out;
    }
    int16_t *q = PyMem_Calloc((size_t)dp, sizeof(int16_t));
    if (q == NULL) {
        PyErr_NoMemory();
        goto release_out;
    }
    float t = (float)(peak / (double)q_max);
    double norm = 0.0, resid = 0.0, stored = 0.0;
    for (Py_ssize_t j = 0; j < d; j++) {
        double r = nearbyint((double)qf[j] * (double)cf[j] / (double)t);
        if (r > (double)q_max) r = (double)q_max;
        if (r < -(double)q_max) r = -(double)q_max;
        q[j] = (int16_t)r;
        double x = qf[j], y = (double)t * r / (double)cf[j];
        norm += x * x;
        resid += (x - y) * (x - y);
        stored += y * y;
    }
#ifndef RECSYS_KEEP_GIL
    Py_BEGIN_ALLOW_THREADS
#endif
#ifdef RECSYS_AVX2
    if (use_avx2 && !portable)
        scan_avx2(codes.buf, scales.buf, q, n, dp, t, out.buf);
    else
#endif
        scan_portable(codes.buf, scales.buf, q, n, dp, t, out.buf);
#ifndef RECSYS_KEEP_GIL
    Py_END_ALLOW_THREADS
#endif
    PyMem_Free(q);
    result = Py_BuildValue("(dddd)", (double)t, sqrt(norm), sqrt(resid), sqrt(stored));
release_out:
    PyBuffer_Release(&out);
release_query:
    PyBuffer_Release(&query);
release_columns:
    PyBuffer_Release(&columns);
release_scales:
    PyBuffer_Release(&scales);
release_codes:
    PyBuffer_Release(&codes);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(codes, scales, columns, query, q_max, out[, portable]) -> (t, |q|, |q - tQ/c|, |tQ/c|) or None: "
     "out[i] = scales[i] * t * sum_j Q[j] codes[i, j] with Q = rint(query * columns / t) (int16)."},
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
