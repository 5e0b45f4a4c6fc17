/* Framing kernel of the PostgreSQL codec: the C twin of two functions in messages.py.
 *
 * split(buf, start, max_length) -> ([(offset, end), ...], offset of the first partial)
 *     `split_messages_py`: the whole messages in buf[start:]; raises ValueError (the caller
 *     turns it into ProtocolViolation) on a length below 4 or above max_length.
 * answer(buf, max_length) -> (heads, ends, c_off, c_end, tag, rows, status) or None
 *     `answer_shape_py`: when buf is exactly one statement's whole answer, 1? 2? [Tn]? D* C Z:
 *     the types of the messages before the rows (ParseComplete, BindComplete,
 *     RowDescription or NoData; bytes) and where each ends (a tuple), where the
 *     CommandComplete starts and ends, its tag, the rows the tag reports (None if it reports
 *     none) and the transaction status of the ReadyForQuery. None for anything else (the
 *     relay's general path then reads it message by message, and reports what is
 *     malformed).
 *
 * The Python functions are the reference: both must give the same result for every input
 * (tests/fuzz/test_pg_framing.py runs every property with both).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline long read_i32(const unsigned char *p) {
    /* Big-endian signed 32-bit, as struct "!i". */
    uint32_t u = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    return (long)(int32_t)u;
}

static PyObject *span(Py_ssize_t a, Py_ssize_t b) {
    PyObject *x = PyLong_FromSsize_t(a), *y = PyLong_FromSsize_t(b);
    if (x == NULL || y == NULL) {
        Py_XDECREF(x);
        Py_XDECREF(y);
        return NULL;
    }
    PyObject *t = PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(x);
        Py_DECREF(y);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, x);
    PyTuple_SET_ITEM(t, 1, y);
    return t;
}

static PyObject *bad_length(long length, unsigned char type) {
    PyObject *t = PyBytes_FromStringAndSize((const char *)&type, 1);
    if (t == NULL) return NULL;
    PyErr_Format(PyExc_ValueError, "invalid message length %ld for message type %R", length, t);
    Py_DECREF(t);
    return NULL;
}

static PyObject *split(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "split(buf, start, max_length)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    long long max_length = PyLong_AsLongLong(args[2]);
    if (max_length == -1 && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *p = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len;
    PyObject *spans = PyList_New(0), *result = NULL;
    if (spans == NULL) goto done;
    if (start < 0) start = 0;
    Py_ssize_t pos = start;
    while (pos + 5 <= n) {
        long length = read_i32(p + pos + 1);
        if (length < 4 || length > max_length) {
            bad_length(length, p[pos]);
            goto done;
        }
        Py_ssize_t end = pos + 1 + (Py_ssize_t)length;
        if (end > n) break;
        PyObject *s = span(pos, end);
        if (s == NULL) goto done;
        int failed = PyList_Append(spans, s);
        Py_DECREF(s);
        if (failed) goto done;
        pos = end;
    }
    result = Py_BuildValue("(On)", spans, pos);
done:
    Py_XDECREF(spans);
    PyBuffer_Release(&view);
    return result;
}

/* One whole message at `pos` of type `type` (0: any) within n bytes: its end, or -1. */
static Py_ssize_t whole(const unsigned char *p, Py_ssize_t n, Py_ssize_t pos, unsigned char type,
                        long long max_length) {
    if (pos + 5 > n || (type && p[pos] != type)) return -1;
    long length = read_i32(p + pos + 1);
    if (length < 4 || length > max_length) return -1;
    Py_ssize_t end = pos + 1 + (Py_ssize_t)length;
    return end > n ? -1 : end;
}

static PyObject *answer(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "answer(buf, max_length)");
        return NULL;
    }
    long long max_length = PyLong_AsLongLong(args[1]);
    if (max_length == -1 && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *p = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len, pos = 0, end, ends[3];
    char heads[3];
    int nheads = 0;
    PyObject *result = NULL;
    /* 1? 2? [Tn]?: each optional, in this order. */
    static const char *const steps[3] = {"1", "2", "Tn"};
    for (int step = 0; step < 3; step++) {
        if (pos < n && p[pos] && strchr(steps[step], p[pos]) != NULL) {
            if ((end = whole(p, n, pos, 0, max_length)) < 0) goto none;
            heads[nheads] = (char)p[pos];
            ends[nheads++] = pos = end;
        }
    }
    while (pos < n && p[pos] == 'D') {
        if ((end = whole(p, n, pos, 'D', max_length)) < 0) goto none;
        pos = end;
    }
    Py_ssize_t c_off = pos, c_end = whole(p, n, pos, 'C', max_length);
    if (c_end < 0) goto none;
    /* ReadyForQuery: exactly 'Z', length 5, one status byte, and nothing after it. */
    if (c_end + 6 != n || p[c_end] != 'Z' || read_i32(p + c_end + 1) != 5) goto none;
    const unsigned char *tag = p + c_off + 5, *nul = memchr(tag, 0, (size_t)(c_end - c_off - 5));
    if (nul == NULL) goto none;
    Py_ssize_t tag_len = nul - tag;
    PyObject *text = PyUnicode_DecodeUTF8((const char *)tag, tag_len, NULL);
    if (text == NULL) {
        PyErr_Clear(); /* not UTF-8: the general path reports it */
        goto none;
    }
    /* The rows the tag reports: its last word (after the last space), when all digits. */
    Py_ssize_t word = tag_len;
    while (word > 0 && tag[word - 1] != ' ') word--;
    int digits = word < tag_len;
    for (Py_ssize_t i = word; i < tag_len && digits; i++) digits = tag[i] >= '0' && tag[i] <= '9';
    PyObject *rows;
    if (digits) {
        PyObject *w = PyUnicode_FromStringAndSize((const char *)tag + word, tag_len - word);
        rows = w == NULL ? NULL : PyLong_FromUnicodeObject(w, 10);
        Py_XDECREF(w);
        if (rows == NULL) {
            Py_DECREF(text);
            goto done;
        }
    } else {
        rows = Py_NewRef(Py_None);
    }
    PyObject *kinds = PyBytes_FromStringAndSize(heads, nheads), *at = PyTuple_New(nheads);
    if (kinds == NULL || at == NULL) {
        Py_XDECREF(kinds);
        Py_XDECREF(at);
        Py_DECREF(text);
        Py_DECREF(rows);
        goto done;
    }
    for (int i = 0; i < nheads; i++) {
        PyObject *e = PyLong_FromSsize_t(ends[i]);
        if (e == NULL) {
            Py_DECREF(kinds);
            Py_DECREF(at);
            Py_DECREF(text);
            Py_DECREF(rows);
            goto done;
        }
        PyTuple_SET_ITEM(at, i, e);
    }
    result = Py_BuildValue("(NNnnNNi)", kinds, at, c_off, c_end, text, rows, (int)p[c_end + 5]);
    goto done;
none:
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL,
     "split(buf, start, max_length) -> (spans, offset of the first partial message)"},
    {"answer", (PyCFunction)(void (*)(void))answer, METH_FASTCALL,
     "answer(buf, max_length) -> (heads, ends, c_off, c_end, tag, rows, status) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_framing", "Framing kernel of the PostgreSQL codec.", -1, methods,
};

PyMODINIT_FUNC PyInit__framing(void) { return PyModule_Create(&module); }
