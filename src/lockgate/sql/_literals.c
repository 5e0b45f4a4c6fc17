/* Literal key of a SQL text: the C twin of `literal_key_py` in literals.py.
 *
 * key(text) -> bytes or None
 *     The UTF-8 text with every plain integer constant (at most 9 digits) replaced by
 *     \x01 and every plain string constant by \x02, the rest byte for byte; None for a text
 *     with `$`, a backslash, a control character (but tab, newline, carriage return), a
 *     block comment, a prefixed string (E'', B'', X'', N'', U&''), an unterminated quote, or
 *     a lone surrogate.
 *
 * The Python function is the reference: both must give the same result for every input
 * (tests/fuzz/test_sql_literals.py compares them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define MAX_DIGITS 9

static inline int is_ident(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           c == '_' || c >= 0x80;
}

static inline int is_run(unsigned char c) { return is_ident(c) || c == '.'; }

/* The end of the quoted token starting at d[i] (its quote doubled inside), or -1. */
static Py_ssize_t quoted_end(const unsigned char *d, Py_ssize_t n, Py_ssize_t i) {
    unsigned char q = d[i];
    Py_ssize_t j = i + 1;
    for (;;) {
        const unsigned char *p = memchr(d + j, q, (size_t)(n - j));
        if (p == NULL) return -1;
        j = p - d + 1;
        if (j < n && d[j] == q) {
            j++; /* a doubled quote: part of the token */
            continue;
        }
        return j;
    }
}

static PyObject *key(PyObject *self, PyObject *text) {
    (void)self;
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "key(text): text must be str");
        return NULL;
    }
    Py_ssize_t n;
    const unsigned char *d = (const unsigned char *)PyUnicode_AsUTF8AndSize(text, &n);
    if (d == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return NULL;
        PyErr_Clear(); /* a lone surrogate */
        Py_RETURN_NONE;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = d[i];
        if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f || c == '$' ||
            c == '\\' || (c == '/' && i + 1 < n && d[i + 1] == '*'))
            Py_RETURN_NONE;
    }
    /* The key is never longer than the text: each blank stands for one byte or more. */
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL) return NULL;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    Py_ssize_t w = 0, i = 0;
    while (i < n) {
        unsigned char c = d[i];
        Py_ssize_t j;
        if (c == '-' && i + 1 < n && d[i + 1] == '-') {
            const unsigned char *p = memchr(d + i, '\n', (size_t)(n - i));
            j = p == NULL ? n : p - d;
        } else if (c == '"' || c == '\'') {
            j = quoted_end(d, n, i);
            if (j < 0 || (c == '\'' && i > 0 && (is_ident(d[i - 1]) || d[i - 1] == '&'))) {
                Py_DECREF(out);
                Py_RETURN_NONE;
            }
            if (c == '\'') {
                o[w++] = 0x02;
                i = j;
                continue;
            }
        } else if (is_run(c)) {
            int digits = 1;
            for (j = i; j < n && is_run(d[j]); j++)
                if (d[j] < '0' || d[j] > '9') digits = 0;
            if (digits && j - i <= MAX_DIGITS) {
                o[w++] = 0x01;
                i = j;
                continue;
            }
        } else {
            j = i + 1;
        }
        memcpy(o + w, d + i, (size_t)(j - i));
        w += j - i;
        i = j;
    }
    if (_PyBytes_Resize(&out, w) < 0) return NULL;
    return out;
}

static PyMethodDef methods[] = {
    {"key", (PyCFunction)key, METH_O, "key(text) -> the text's literal key (bytes) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_literals", "Literal key of a SQL text.", -1, methods,
};

PyMODINIT_FUNC PyInit__literals(void) { return PyModule_Create(&module); }
