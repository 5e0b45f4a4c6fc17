/* Row-rewrite kernel of masking: the C twin of lockgate/masking/rowkernel.py.
 *
 * rewrite(data, start, stop, ops) -> (bytes, [masked cells per op])
 * joined(data, start, stop, index) -> (field `index` of each row, b"\0" between, rows)
 *
 * `data[start:stop]` is a run of PostgreSQL DataRow messages. `ops` is a tuple of
 * (field index, op, cell, keep_last, key, hash_chars, call, table), one per planned column, in
 * field order (see rowkernel.py for what each op does). Only the fields up to the last
 * planned one are walked; untouched rows are copied as they are. Redact and null cells
 * are fixed bytes; partial and hash run here for ASCII values (HMAC-SHA256 with the
 * inner and outer states prepared once per call), anything else calls back into Python.
 * The Python module is the reference: both must give the same bytes for every input.
 */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED
#include <Python.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

enum { OP_REDACT = 1, OP_NULL = 2, OP_PARTIAL = 3, OP_HASH = 4, OP_CALL = 5, OP_TABLE = 6 };

typedef struct {
    Py_ssize_t index;
    int op;
    const char *cell;
    Py_ssize_t cell_len;
    long keep_last;
    int hash_chars;
    PyObject *call;
    PyObject *table;
    SHA256_CTX inner, outer;
    Py_ssize_t count;
} CellOp;

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} Out;

static int out_reserve(Out *o, Py_ssize_t more) {
    if (o->len + more <= o->cap) return 0;
    Py_ssize_t cap = o->cap ? o->cap : 4096;
    while (cap < o->len + more) cap *= 2;
    char *p = PyMem_Realloc(o->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->p = p;
    o->cap = cap;
    return 0;
}

static inline int out_put(Out *o, const void *src, Py_ssize_t n) {
    if (out_reserve(o, n) < 0) return -1;
    memcpy(o->p + o->len, src, (size_t)n);
    o->len += n;
    return 0;
}

static inline int32_t be32(const unsigned char *p) {
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
                     (uint32_t)p[3]);
}

static inline void put_be32(unsigned char *p, int32_t v) {
    uint32_t u = (uint32_t)v;
    p[0] = (unsigned char)(u >> 24);
    p[1] = (unsigned char)(u >> 16);
    p[2] = (unsigned char)(u >> 8);
    p[3] = (unsigned char)u;
}

static int is_ascii(const unsigned char *v, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (v[i] & 0x80) return 0;
    return 1;
}

static inline int is_alnum(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* strategies.partial for an ASCII value: the cell (length + bytes) into `dst`. */
static Py_ssize_t partial_cell(const unsigned char *v, Py_ssize_t n, long keep_last,
                               unsigned char *dst) {
    Py_ssize_t at = -1;
    for (Py_ssize_t i = n - 1; i >= 0; i--)
        if (v[i] == '@') {
            at = i;
            break;
        }
    if (at > 0 && at < n - 1 && memchr(v + at, '.', (size_t)(n - at)) != NULL) {
        put_be32(dst, (int32_t)(4 + n - at));
        memcpy(dst + 4, "****", 4);
        memcpy(dst + 8, v + at, (size_t)(n - at));
        return 8 + n - at;
    }
    Py_ssize_t alnum = 0;
    for (Py_ssize_t i = 0; i < n; i++) alnum += is_alnum(v[i]);
    Py_ssize_t keep = alnum > (Py_ssize_t)keep_last * 2 ? (Py_ssize_t)keep_last : 0;
    Py_ssize_t limit = alnum - keep, seen = 0;
    put_be32(dst, (int32_t)n);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = v[i];
        if (is_alnum(c)) {
            dst[4 + i] = seen < limit ? '*' : c;
            seen++;
        } else {
            dst[4 + i] = c;
        }
    }
    return 4 + n;
}

/* "h:" + the first hash_chars hex digits of HMAC-SHA256(key, v), as a cell. */
static Py_ssize_t hash_cell(const CellOp *op, const unsigned char *v, Py_ssize_t n,
                            unsigned char *dst) {
    static const char hex[] = "0123456789abcdef";
    unsigned char inner[SHA256_DIGEST_LENGTH], digest[SHA256_DIGEST_LENGTH];
    SHA256_CTX ctx = op->inner;
    SHA256_Update(&ctx, v, (size_t)n);
    SHA256_Final(inner, &ctx);
    ctx = op->outer;
    SHA256_Update(&ctx, inner, sizeof inner);
    SHA256_Final(digest, &ctx);
    int k = op->hash_chars;
    put_be32(dst, 2 + k);
    dst[4] = 'h';
    dst[5] = ':';
    for (int i = 0; i < k; i++) {
        unsigned char b = digest[i / 2];
        dst[6 + i] = (unsigned char)hex[i % 2 ? b & 15 : b >> 4];
    }
    return 6 + k;
}

static void hmac_states(CellOp *op, const unsigned char *key, Py_ssize_t key_len) {
    unsigned char block[64], pad[64];
    memset(block, 0, sizeof block);
    if (key_len > 64) {
        SHA256(key, (size_t)key_len, block);
    } else {
        memcpy(block, key, (size_t)key_len);
    }
    for (int i = 0; i < 64; i++) pad[i] = block[i] ^ 0x36;
    SHA256_Init(&op->inner);
    SHA256_Update(&op->inner, pad, 64);
    for (int i = 0; i < 64; i++) pad[i] = block[i] ^ 0x5c;
    SHA256_Init(&op->outer);
    SHA256_Update(&op->outer, pad, 64);
}

/* Python's answer for a cell: a new reference to the new cell bytes, Py_None to keep it,
 * or NULL on error; adds the masked count. */
static PyObject *call_cell(CellOp *op, const unsigned char *v, Py_ssize_t n) {
    PyObject *raw = PyBytes_FromStringAndSize((const char *)v, n);
    if (raw == NULL) return NULL;
    PyObject *got = PyObject_CallOneArg(op->call, raw);
    Py_DECREF(raw);
    if (got == NULL) return NULL;
    if (!PyTuple_Check(got) || PyTuple_GET_SIZE(got) != 2) {
        Py_DECREF(got);
        PyErr_SetString(PyExc_TypeError, "a cell callback returns (cell or None, count)");
        return NULL;
    }
    PyObject *cell = PyTuple_GET_ITEM(got, 0);
    Py_ssize_t found = PyLong_AsSsize_t(PyTuple_GET_ITEM(got, 1));
    if (found == -1 && PyErr_Occurred()) {
        Py_DECREF(got);
        return NULL;
    }
    if (cell != Py_None && !PyBytes_Check(cell)) {
        Py_DECREF(got);
        PyErr_SetString(PyExc_TypeError, "a cell callback's cell must be bytes");
        return NULL;
    }
    op->count += found;
    Py_INCREF(cell);
    Py_DECREF(got);
    return cell;
}

static PyObject *malformed(void) {
    PyErr_SetString(PyExc_ValueError, "malformed DataRow: a field runs past the message");
    return NULL;
}

static PyObject *rewrite(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start, stop;
    PyObject *ops_obj;
    if (!PyArg_ParseTuple(args, "y*nnO!", &view, &start, &stop, &PyTuple_Type, &ops_obj))
        return NULL;
    PyObject *result = NULL;
    Out out = {NULL, 0, 0};
    Py_ssize_t nops = PyTuple_GET_SIZE(ops_obj);
    CellOp *ops = PyMem_Calloc((size_t)(nops ? nops : 1), sizeof(CellOp));
    unsigned char *tmp = NULL;
    Py_ssize_t tmp_cap = 0;
    if (ops == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (start < 0 || stop > view.len || start > stop) {
        PyErr_SetString(PyExc_ValueError, "start/stop outside the buffer");
        goto done;
    }
    for (Py_ssize_t k = 0; k < nops; k++) {
        PyObject *t = PyTuple_GET_ITEM(ops_obj, k);
        const char *cell, *key;
        Py_ssize_t cell_len, key_len;
        CellOp *op = &ops[k];
        if (!PyArg_ParseTuple(t, "niy#ly#iOO", &op->index, &op->op, &cell, &cell_len,
                              &op->keep_last, &key, &key_len, &op->hash_chars, &op->call,
                              &op->table))
            goto done;
        if (op->op == OP_TABLE && !PyList_Check(op->table)) {
            PyErr_SetString(PyExc_TypeError, "a table op needs a list");
            goto done;
        }
        if (op->op < OP_REDACT || op->op > OP_TABLE || (k && op->index <= ops[k - 1].index) ||
            op->index < 0 || op->hash_chars < 0 || op->hash_chars > 64) {
            PyErr_SetString(PyExc_ValueError, "bad cell op");
            goto done;
        }
        op->cell = cell;
        op->cell_len = cell_len;
        if (op->op == OP_HASH) hmac_states(op, (const unsigned char *)key, key_len);
    }
    const unsigned char *data = view.buf;
    if (out_reserve(&out, stop - start + 64) < 0) goto done;
    Py_ssize_t pos = start, row = 0;
    for (; pos < stop; row++) {
        if (stop - pos < 7 || data[pos] != 'D') {
            PyErr_SetString(PyExc_ValueError, "not a DataRow");
            goto done;
        }
        int32_t length = be32(data + pos + 1);
        Py_ssize_t end = pos + 1 + (Py_ssize_t)length;
        if (length < 6 || end > stop) {
            malformed();
            goto done;
        }
        Py_ssize_t nfields = (int16_t)((data[pos + 5] << 8) | data[pos + 6]);
        Py_ssize_t p = pos + 7, field = 0, copied = -1, row_start = out.len;
        for (Py_ssize_t k = 0; k < nops; k++) {
            CellOp *op = &ops[k];
            if (op->index >= nfields) {
                malformed();
                goto done;
            }
            while (field < op->index) {
                if (end - p < 4) {
                    malformed();
                    goto done;
                }
                int32_t n = be32(data + p);
                p += 4 + (n > 0 ? n : 0);
                field++;
            }
            if (end - p < 4) {
                malformed();
                goto done;
            }
            int32_t n = be32(data + p);
            field++;
            if (n < 0) {
                p += 4;
                continue;
            }
            if (end - p - 4 < n) {
                malformed();
                goto done;
            }
            const unsigned char *v = data + p + 4;
            const unsigned char *new_cell = NULL;
            Py_ssize_t new_len = 0;
            PyObject *held = NULL;
            int op_kind = op->op;
            if ((op_kind == OP_PARTIAL || op_kind == OP_HASH) && !is_ascii(v, n))
                op_kind = OP_CALL;
            if (op_kind == OP_PARTIAL || op_kind == OP_HASH) {
                Py_ssize_t need = 8 + (Py_ssize_t)n + 70;
                if (need > tmp_cap) {
                    unsigned char *t2 = PyMem_Realloc(tmp, (size_t)need);
                    if (t2 == NULL) {
                        PyErr_NoMemory();
                        goto done;
                    }
                    tmp = t2;
                    tmp_cap = need;
                }
                new_len = op_kind == OP_PARTIAL ? partial_cell(v, n, op->keep_last, tmp)
                                                : hash_cell(op, v, n, tmp);
                new_cell = tmp;
                op->count++;
            } else if (op_kind == OP_REDACT) {
                new_cell = (const unsigned char *)op->cell;
                new_len = op->cell_len;
                op->count++;
            } else if (op_kind == OP_TABLE) {
                if (row >= PyList_GET_SIZE(op->table)) {
                    PyErr_SetString(PyExc_ValueError, "a table op has fewer cells than rows");
                    goto done;
                }
                PyObject *got = PyList_GET_ITEM(op->table, row);
                if (got != Py_None) {
                    if (!PyBytes_Check(got)) {
                        PyErr_SetString(PyExc_TypeError, "a table op's cells must be bytes");
                        goto done;
                    }
                    new_cell = (const unsigned char *)PyBytes_AS_STRING(got);
                    new_len = PyBytes_GET_SIZE(got);
                }
            } else if (op_kind == OP_NULL) {
                new_cell = (const unsigned char *)"\xff\xff\xff\xff";
                new_len = 4;
                op->count++;
            } else {
                held = call_cell(op, v, n);
                if (held == NULL) goto done;
                if (held != Py_None) {
                    new_cell = (const unsigned char *)PyBytes_AS_STRING(held);
                    new_len = PyBytes_GET_SIZE(held);
                }
            }
            if (new_cell != NULL) {
                if (copied < 0) {
                    /* First change in this row: type byte, a length to fill in, count. */
                    if (out_put(&out, "D\0\0\0\0", 5) < 0 ||
                        out_put(&out, data + pos + 5, 2) < 0) {
                        Py_XDECREF(held);
                        goto done;
                    }
                    copied = pos + 7;
                }
                if (out_put(&out, data + copied, p - copied) < 0 ||
                    out_put(&out, new_cell, new_len) < 0) {
                    Py_XDECREF(held);
                    goto done;
                }
                copied = p + 4 + n;
            }
            Py_XDECREF(held);
            p += 4 + n;
        }
        if (copied < 0) {
            if (out_put(&out, data + pos, end - pos) < 0) goto done;
        } else {
            if (out_put(&out, data + copied, end - copied) < 0) goto done;
            Py_ssize_t row_len = out.len - row_start - 1;
            if (row_len > INT32_MAX) {
                PyErr_SetString(PyExc_ValueError, "masked DataRow too long");
                goto done;
            }
            put_be32((unsigned char *)out.p + row_start + 1, (int32_t)row_len);
        }
        pos = end;
    }
    PyObject *rows = PyBytes_FromStringAndSize(out.p, out.len);
    if (rows == NULL) goto done;
    PyObject *counts = PyList_New(nops);
    if (counts == NULL) {
        Py_DECREF(rows);
        goto done;
    }
    for (Py_ssize_t k = 0; k < nops; k++) {
        PyObject *c = PyLong_FromSsize_t(ops[k].count);
        if (c == NULL) {
            Py_DECREF(rows);
            Py_DECREF(counts);
            goto done;
        }
        PyList_SET_ITEM(counts, k, c);
    }
    result = PyTuple_Pack(2, rows, counts);
    Py_DECREF(rows);
    Py_DECREF(counts);
done:
    PyMem_Free(out.p);
    PyMem_Free(ops);
    PyMem_Free(tmp);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *joined(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start, stop, index;
    if (!PyArg_ParseTuple(args, "y*nnn", &view, &start, &stop, &index)) return NULL;
    PyObject *result = NULL;
    Out out = {NULL, 0, 0};
    Py_ssize_t rows = 0;
    const unsigned char *data = view.buf;
    if (start < 0 || stop > view.len || start > stop || index < 0) {
        PyErr_SetString(PyExc_ValueError, "start/stop/index outside the buffer");
        goto done;
    }
    if (out_reserve(&out, (stop - start) / 2 + 64) < 0) goto done;
    for (Py_ssize_t pos = start; pos < stop; rows++) {
        if (stop - pos < 7 || data[pos] != 'D') {
            PyErr_SetString(PyExc_ValueError, "not a DataRow");
            goto done;
        }
        Py_ssize_t end = pos + 1 + (Py_ssize_t)be32(data + pos + 1);
        Py_ssize_t nfields = (int16_t)((data[pos + 5] << 8) | data[pos + 6]);
        if (end - pos < 7 || end > stop || index >= nfields) {
            malformed();
            goto done;
        }
        Py_ssize_t p = pos + 7;
        for (Py_ssize_t field = 0;; field++) {
            if (end - p < 4) {
                malformed();
                goto done;
            }
            int32_t n = be32(data + p);
            if (n > 0 && end - p - 4 < n) {
                malformed();
                goto done;
            }
            if (field == index) {
                if ((rows && out_put(&out, "\0", 1) < 0) ||
                    (n > 0 && out_put(&out, data + p + 4, n) < 0))
                    goto done;
                break;
            }
            p += 4 + (n > 0 ? n : 0);
        }
        pos = end;
    }
    result = Py_BuildValue("y#n", out.p ? out.p : "", out.len, rows);
done:
    PyMem_Free(out.p);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"rewrite", rewrite, METH_VARARGS, "Rewrite a run of DataRows (see rowkernel.py)."},
    {"joined", joined, METH_VARARGS, "Field `index` of each DataRow, b'\\0' between."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rowkernel", "C row-rewrite kernel of masking.", -1, methods,
};

PyMODINIT_FUNC PyInit__rowkernel(void) { return PyModule_Create(&module); }
