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
 * bind(buf, start, end, limit, texts) -> (portal, statement, parameter texts or None)
 *     `bind_texts_py`: the Bind message body at buf[start:end] read in place, with each
 *     parameter as the audit shows it (text format decoded, binary as \\x hex, cut to
 *     `limit` characters) when `texts` is true; raises ValueError on a malformed body.
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

/* A NUL-terminated UTF-8 name at p[*pos] before `end`: a new str, *pos moved past the NUL. */
static PyObject *cstring(const unsigned char *p, Py_ssize_t *pos, Py_ssize_t end) {
    const unsigned char *nul = memchr(p + *pos, 0, (size_t)(end - *pos));
    if (nul == NULL) {
        PyErr_SetString(PyExc_ValueError, "unterminated string in message");
        return NULL;
    }
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p + *pos, nul - (p + *pos), NULL);
    if (s == NULL) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "string in message is not valid UTF-8");
        return NULL;
    }
    *pos = nul - p + 1;
    return s;
}

static inline int read_i16(const unsigned char *p) { return (int)(int16_t)((p[0] << 8) | p[1]); }

/* One parameter as the audit shows it, at most `limit` characters and an ellipsis. */
static PyObject *param_text(const unsigned char *v, Py_ssize_t size, int binary, Py_ssize_t limit) {
    PyObject *text;
    if (binary) {
        static const char digits[] = "0123456789abcdef";
        text = PyUnicode_New(2 + 2 * size, 127);
        if (text == NULL) return NULL;
        Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
        out[0] = '\\';
        out[1] = 'x';
        for (Py_ssize_t i = 0; i < size; i++) {
            out[2 + 2 * i] = (Py_UCS1)digits[v[i] >> 4];
            out[3 + 2 * i] = (Py_UCS1)digits[v[i] & 15];
        }
    } else {
        text = PyUnicode_DecodeUTF8((const char *)v, size, "replace");
        if (text == NULL) return NULL;
    }
    if (PyUnicode_GET_LENGTH(text) <= limit) return text;
    PyObject *head = PyUnicode_Substring(text, 0, limit);
    Py_DECREF(text);
    if (head == NULL) return NULL;
    PyObject *ellipsis = PyUnicode_FromOrdinal(0x2026);
    PyObject *cut = ellipsis == NULL ? NULL : PyUnicode_Concat(head, ellipsis);
    Py_XDECREF(ellipsis);
    Py_DECREF(head);
    return cut;
}

static PyObject *bind(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "bind(buf, start, end, limit, texts)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    if (end == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t limit = PyLong_AsSsize_t(args[3]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    int texts = PyObject_IsTrue(args[4]);
    if (texts < 0) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *p = (const unsigned char *)view.buf;
    PyObject *portal = NULL, *statement = NULL, *params = NULL, *result = NULL;
    if (start < 0 || end > view.len || start > end) {
        PyErr_SetString(PyExc_ValueError, "Bind message bounds out of range");
        goto done;
    }
    Py_ssize_t pos = start;
    if ((portal = cstring(p, &pos, end)) == NULL) goto done;
    if ((statement = cstring(p, &pos, end)) == NULL) goto done;
    if (pos + 2 > end) goto truncated;
    int nfmt = read_i16(p + pos);
    pos += 2;
    if (nfmt < 0) {
        PyErr_SetString(PyExc_ValueError, "Bind message has a negative format count");
        goto done;
    }
    const unsigned char *formats = p + pos;
    if (pos + 2 * (Py_ssize_t)nfmt + 2 > end) goto truncated;
    pos += 2 * (Py_ssize_t)nfmt;
    int nparams = read_i16(p + pos);
    pos += 2;
    if (nparams < 0) {
        PyErr_SetString(PyExc_ValueError, "Bind message has a negative parameter count");
        goto done;
    }
    if (texts && (params = PyTuple_New(nparams)) == NULL) goto done;
    for (int i = 0; i < nparams; i++) {
        if (pos + 4 > end) goto truncated;
        long size = read_i32(p + pos);
        pos += 4;
        if (size == -1) {
            if (params != NULL) PyTuple_SET_ITEM(params, i, Py_NewRef(Py_None));
            continue;
        }
        if (size < 0 || pos + size > end) {
            PyErr_SetString(PyExc_ValueError, "Bind message has an invalid parameter length");
            goto done;
        }
        if (params != NULL) {
            int fmt = nfmt == 1 ? read_i16(formats) : (i < nfmt ? read_i16(formats + 2 * i) : 0);
            PyObject *text = param_text(p + pos, size, fmt != 0, limit);
            if (text == NULL) goto done;
            PyTuple_SET_ITEM(params, i, text);
        }
        pos += size;
    }
    result = PyTuple_Pack(3, portal, statement, params != NULL ? params : Py_None);
    goto done;
truncated:
    PyErr_SetString(PyExc_ValueError, "Bind message is truncated");
done:
    Py_XDECREF(portal);
    Py_XDECREF(statement);
    Py_XDECREF(params);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL,
     "split(buf, start, max_length) -> (spans, offset of the first partial message)"},
    {"answer", (PyCFunction)(void (*)(void))answer, METH_FASTCALL,
     "answer(buf, max_length) -> (heads, ends, c_off, c_end, tag, rows, status) or None"},
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL,
     "bind(buf, start, end, limit, texts) -> (portal, statement, parameter texts or None)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_framing", "Framing kernel of the PostgreSQL codec.", -1, methods,
};

PyMODINIT_FUNC PyInit__framing(void) { return PyModule_Create(&module); }
