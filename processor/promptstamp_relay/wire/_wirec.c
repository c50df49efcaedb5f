/* The byte-level span index, marker search, splice and per-span checks of wire/__init__.py, in C.
 *
 * Same semantics as the pure-Python functions in wire/__init__.py (which stay the fallback when this
 * extension is not built); tests/wire/test_wire.py checks both against protobuf's own decoder.
 * Every read is bounds-checked: input is whatever a network sent, though the relay only calls
 * these after protobuf's decoder accepted the same bytes.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint32_t field;
    int wt;
    Py_ssize_t head, start, end;
} Field;

static int read_varint(const unsigned char *d, Py_ssize_t end, Py_ssize_t *pos, uint64_t *out) {
    uint64_t r = 0;
    int shift = 0;
    while (*pos < end) {
        unsigned char b = d[(*pos)++];
        if (shift > 63) return -1;
        r |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            *out = r;
            return 0;
        }
        shift += 7;
    }
    return -1;
}

/* Skip a group (wire type 3) whose start tag for `field` was just read: up to its matching end
 * tag, nested groups included. Protobuf's decoder accepts groups as unknown fields, so the walk
 * must too (else a valid request could not be walked). 0 ok, -1 malformed. */
#define MAX_GROUP_DEPTH 128
static int skip_group(const unsigned char *d, Py_ssize_t end, Py_ssize_t *pos, uint32_t field) {
    uint32_t open[MAX_GROUP_DEPTH];
    int depth = 0;
    open[depth++] = field;
    while (depth > 0) {
        uint64_t tag, v;
        if (read_varint(d, end, pos, &tag)) return -1;
        uint32_t f = (uint32_t)(tag >> 3);
        switch ((int)(tag & 7)) {
        case 0:
            if (read_varint(d, end, pos, &v)) return -1;
            break;
        case 1:
            if (end - *pos < 8) return -1;
            *pos += 8;
            break;
        case 5:
            if (end - *pos < 4) return -1;
            *pos += 4;
            break;
        case 2:
            if (read_varint(d, end, pos, &v)) return -1;
            if (v > (uint64_t)(end - *pos)) return -1;
            *pos += (Py_ssize_t)v;
            break;
        case 3:
            if (depth == MAX_GROUP_DEPTH) return -1;
            open[depth++] = f;
            break;
        case 4:
            if (open[--depth] != f) return -1;
            break;
        default:
            return -1;
        }
    }
    return 0;
}

/* 1: a field was read into f; 0: end reached exactly; -1: malformed. */
static inline __attribute__((always_inline)) int next_field(const unsigned char *d, Py_ssize_t *pos, Py_ssize_t end, Field *f) {
    uint64_t tag, v;
    if (*pos >= end) return *pos == end ? 0 : -1;
    f->head = *pos;
    /* Fast path, most fields: a one-byte tag of a length-delimited field shorter than 128. */
    if (end - *pos >= 2 && (d[*pos] & 0x87) == 0x02 && d[*pos + 1] < 0x80) {
        Py_ssize_t n = d[*pos + 1], s = *pos + 2;
        if (n > end - s) return -1;
        f->field = (uint32_t)(d[*pos] >> 3);
        f->wt = 2;
        f->start = s;
        f->end = *pos = s + n;
        return 1;
    }
    if (read_varint(d, end, pos, &tag)) return -1;
    f->field = (uint32_t)(tag >> 3);
    f->wt = (int)(tag & 7);
    switch (f->wt) {
    case 0:
        if (read_varint(d, end, pos, &v)) return -1;
        break;
    case 1:
        if (end - *pos < 8) return -1;
        *pos += 8;
        break;
    case 5:
        if (end - *pos < 4) return -1;
        *pos += 4;
        break;
    case 3:
        if (skip_group(d, end, pos, f->field)) return -1;
        break;
    case 2:
        if (read_varint(d, end, pos, &v)) return -1;
        if (v > (uint64_t)(end - *pos)) return -1;
        f->start = *pos;
        f->end = *pos + (Py_ssize_t)v;
        *pos = f->end;
        return 1;
    default:
        return -1;
    }
    f->start = f->end = *pos;
    return 1;
}

static PyObject *WireError;

static PyObject *malformed(void) {
    PyErr_SetString(WireError, "malformed request");
    return NULL;
}

/* walk(data) -> (starts, ends, scope_counts): every span's content range, in decode order,
 * and for each resource_spans the number of spans of each of its scope_spans. */
static PyObject *wire_walk(PyObject *self, PyObject *args) {
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*", &buf)) return NULL;
    const unsigned char *d = buf.buf;
    Py_ssize_t n = buf.len, pos = 0;
    PyObject *starts = PyList_New(0), *ends = PyList_New(0), *counts = PyList_New(0);
    PyObject *result = NULL;
    Field rs, ss, sp;
    int r;
    if (!starts || !ends || !counts) goto done;
    while ((r = next_field(d, &pos, n, &rs)) == 1) {
        if (rs.field != 1 || rs.wt != 2) continue;
        PyObject *scopes = PyList_New(0);
        if (!scopes || PyList_Append(counts, scopes)) { Py_XDECREF(scopes); goto done; }
        Py_DECREF(scopes);
        Py_ssize_t rp = rs.start;
        int r2;
        while ((r2 = next_field(d, &rp, rs.end, &ss)) == 1) {
            if (ss.field != 2 || ss.wt != 2) continue;
            Py_ssize_t sp_pos = ss.start, count = 0;
            int r3;
            while ((r3 = next_field(d, &sp_pos, ss.end, &sp)) == 1) {
                if (sp.field != 2 || sp.wt != 2) continue;
                PyObject *s = PyLong_FromSsize_t(sp.start), *e = PyLong_FromSsize_t(sp.end);
                int bad = !s || !e || PyList_Append(starts, s) || PyList_Append(ends, e);
                Py_XDECREF(s);
                Py_XDECREF(e);
                if (bad) goto done;
                count++;
            }
            if (r3 < 0) { malformed(); goto done; }
            PyObject *c = PyLong_FromSsize_t(count);
            if (!c || PyList_Append(scopes, c)) { Py_XDECREF(c); goto done; }
            Py_DECREF(c);
        }
        if (r2 < 0) { malformed(); goto done; }
    }
    if (r < 0) { malformed(); goto done; }
    result = PyTuple_Pack(3, starts, ends, counts);
done:
    Py_XDECREF(starts);
    Py_XDECREF(ends);
    Py_XDECREF(counts);
    PyBuffer_Release(&buf);
    return result;
}

/* marked(data, starts, ends, markers, among) -> sorted list of the span indexes (among all, or
 * among the given ones) whose bytes contain any marker. */
static PyObject *wire_marked(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *starts, *ends, *markers, *among;
    if (!PyArg_ParseTuple(args, "y*O!O!O!O", &buf, &PyList_Type, &starts, &PyList_Type, &ends,
                          &PyTuple_Type, &markers, &among))
        return NULL;
    PyObject *out = PyList_New(0);
    Py_ssize_t nspans = PyList_GET_SIZE(starts), nmark = PyTuple_GET_SIZE(markers);
    Py_ssize_t count = among == Py_None ? nspans : -1;
    if (!out) goto fail;
    if (PyList_GET_SIZE(ends) != nspans) {
        PyErr_SetString(PyExc_ValueError, "starts and ends differ in length");
        goto fail;
    }
    if (among != Py_None) {
        if (!PyList_Check(among)) {
            PyErr_SetString(PyExc_TypeError, "among must be a list or None");
            goto fail;
        }
        count = PyList_GET_SIZE(among);
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_ssize_t i = k;
        if (among != Py_None) {
            i = PyLong_AsSsize_t(PyList_GET_ITEM(among, k));
            if (i == -1 && PyErr_Occurred()) goto fail;
            if (i < 0 || i >= nspans) {
                PyErr_SetString(PyExc_IndexError, "span index out of range");
                goto fail;
            }
        }
        Py_ssize_t s = PyLong_AsSsize_t(PyList_GET_ITEM(starts, i));
        Py_ssize_t e = PyLong_AsSsize_t(PyList_GET_ITEM(ends, i));
        if ((s == -1 || e == -1) && PyErr_Occurred()) goto fail;
        if (s < 0 || e > buf.len || s > e) {
            PyErr_SetString(PyExc_ValueError, "span range outside the data");
            goto fail;
        }
        for (Py_ssize_t m = 0; m < nmark; m++) {
            PyObject *mk = PyTuple_GET_ITEM(markers, m);
            if (!PyBytes_Check(mk)) {
                PyErr_SetString(PyExc_TypeError, "markers must be bytes");
                goto fail;
            }
            if (memmem((const char *)buf.buf + s, (size_t)(e - s), PyBytes_AS_STRING(mk),
                       (size_t)PyBytes_GET_SIZE(mk))) {
                PyObject *idx = PyLong_FromSsize_t(i);
                if (!idx || PyList_Append(out, idx)) { Py_XDECREF(idx); goto fail; }
                Py_DECREF(idx);
                break;
            }
        }
    }
    PyBuffer_Release(&buf);
    if (PyList_Sort(out)) { Py_DECREF(out); return NULL; }
    return out;
fail:
    Py_XDECREF(out);
    PyBuffer_Release(&buf);
    return NULL;
}

/* ---- splice ------------------------------------------------------------------------------ */
typedef struct {
    Py_ssize_t index;
    const char *bytes;
    Py_ssize_t len;
    int del;
} Edit;

typedef struct {
    const unsigned char *d;
    Edit *edits;
    Py_ssize_t nedits;
    char *out;  /* NULL: size only */
    Py_ssize_t pos;
} Splice;

static int varint_len(uint64_t v) {
    int n = 1;
    while (v > 0x7F) { v >>= 7; n++; }
    return n;
}

static void put(Splice *S, const void *src, Py_ssize_t n) {
    if (S->out) memcpy(S->out + S->pos, src, (size_t)n);
    S->pos += n;
}

static void put_head(Splice *S, unsigned char tag, uint64_t len) {
    unsigned char tmp[11];
    int k = 0;
    tmp[k++] = tag;
    while (len > 0x7F) { tmp[k++] = (unsigned char)((len & 0x7F) | 0x80); len >>= 7; }
    tmp[k++] = (unsigned char)len;
    put(S, tmp, k);
}

static const Edit *edit_for(const Splice *S, Py_ssize_t flat, Py_ssize_t *cursor) {
    while (*cursor < S->nedits && S->edits[*cursor].index < flat) (*cursor)++;
    if (*cursor < S->nedits && S->edits[*cursor].index == flat) return &S->edits[*cursor];
    return NULL;
}

/* Body of one scope_spans with its edits; returns body length (or -1), sets *kept. */
static Py_ssize_t scope_body(Splice *S, Py_ssize_t start, Py_ssize_t end, Py_ssize_t *flat,
                             Py_ssize_t *cursor, Py_ssize_t *kept, Py_ssize_t *had) {
    Py_ssize_t pos = start, copy_from = start, begin = S->pos;
    Field f;
    int r;
    *kept = 0;
    *had = 0;
    while ((r = next_field(S->d, &pos, end, &f)) == 1) {
        if (f.field != 2 || f.wt != 2) continue;
        (*had)++;
        const Edit *e = edit_for(S, *flat, cursor);
        (*flat)++;
        if (!e) { (*kept)++; continue; }
        put(S, S->d + copy_from, f.head - copy_from);
        copy_from = f.end;
        if (e->del) continue;
        (*kept)++;
        put_head(S, 0x12, (uint64_t)(f.end - f.start + e->len));
        put(S, S->d + f.start, f.end - f.start);
        put(S, e->bytes, e->len);
    }
    if (r < 0) return -1;
    put(S, S->d + copy_from, end - copy_from);
    return S->pos - begin;
}

/* Body of one resource_spans; returns its length (or -1), sets *kept. */
static Py_ssize_t resource_body(Splice *S, Py_ssize_t start, Py_ssize_t end, Py_ssize_t *flat,
                                Py_ssize_t *cursor, Py_ssize_t *kept) {
    Py_ssize_t pos = start, copy_from = start, begin = S->pos;
    Field f;
    int r;
    Py_ssize_t had_scopes = 0;
    *kept = 0;
    while ((r = next_field(S->d, &pos, end, &f)) == 1) {
        if (f.field != 2 || f.wt != 2) continue;
        had_scopes++;
        put(S, S->d + copy_from, f.head - copy_from);
        copy_from = f.end;
        /* Size the scope body first, then write it after its head. */
        char *saved_out = S->out;
        Py_ssize_t saved_pos = S->pos, saved_flat = *flat, saved_cursor = *cursor;
        Py_ssize_t kept_spans, had_spans;
        S->out = NULL;
        Py_ssize_t len = scope_body(S, f.start, f.end, flat, cursor, &kept_spans, &had_spans);
        S->out = saved_out;
        S->pos = saved_pos;
        if (len < 0) return -1;
        if (kept_spans == 0 && had_spans > 0) continue; /* every span of it was taken out */
        (*kept)++;
        *flat = saved_flat;
        *cursor = saved_cursor;
        put_head(S, 0x12, (uint64_t)len);
        scope_body(S, f.start, f.end, flat, cursor, &kept_spans, &had_spans);
    }
    if (r < 0) return -1;
    put(S, S->d + copy_from, end - copy_from);
    if (had_scopes == 0) *kept = 1; /* arrived without scopes: stays as it was */
    return S->pos - begin;
}

static Py_ssize_t splice_all(Splice *S, Py_ssize_t n) {
    Py_ssize_t pos = 0, copy_from = 0, flat = 0, cursor = 0;
    Field f;
    int r;
    while ((r = next_field(S->d, &pos, n, &f)) == 1) {
        if (f.field != 1 || f.wt != 2) continue;
        put(S, S->d + copy_from, f.head - copy_from);
        copy_from = f.end;
        char *saved_out = S->out;
        Py_ssize_t saved_pos = S->pos, saved_flat = flat, saved_cursor = cursor, kept;
        S->out = NULL;
        Py_ssize_t len = resource_body(S, f.start, f.end, &flat, &cursor, &kept);
        S->out = saved_out;
        S->pos = saved_pos;
        if (len < 0) return -1;
        if (kept == 0) continue;
        flat = saved_flat;
        cursor = saved_cursor;
        put_head(S, 0x0a, (uint64_t)len);
        resource_body(S, f.start, f.end, &flat, &cursor, &kept);
    }
    if (r < 0) return -1;
    put(S, S->d + copy_from, n - copy_from);
    return S->pos;
}

static int cmp_edit(const void *a, const void *b) {
    Py_ssize_t x = ((const Edit *)a)->index, y = ((const Edit *)b)->index;
    return x < y ? -1 : x > y;
}

/* splice(data, edits: dict[int, bytes], delete: bytes) -> bytes */
static PyObject *wire_splice(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *edits, *delete_marker;
    if (!PyArg_ParseTuple(args, "y*O!O!", &buf, &PyDict_Type, &edits, &PyBytes_Type, &delete_marker))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t ne = PyDict_Size(edits), k = 0, dpos = 0;
    Edit *arr = PyMem_Malloc(sizeof(Edit) * (size_t)(ne ? ne : 1));
    PyObject *key, *value;
    if (!arr) { PyErr_NoMemory(); goto done; }
    while (PyDict_Next(edits, &dpos, &key, &value)) {
        if (!PyBytes_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "edits must map span indexes to bytes");
            goto done;
        }
        arr[k].index = PyLong_AsSsize_t(key);
        if (arr[k].index == -1 && PyErr_Occurred()) goto done;
        arr[k].del = value == delete_marker;
        arr[k].bytes = PyBytes_AS_STRING(value);
        arr[k].len = arr[k].del ? 0 : PyBytes_GET_SIZE(value);
        k++;
    }
    qsort(arr, (size_t)ne, sizeof(Edit), cmp_edit);
    Splice S = {buf.buf, arr, ne, NULL, 0};
    Py_ssize_t size = splice_all(&S, buf.len);
    if (size < 0) { malformed(); goto done; }
    result = PyBytes_FromStringAndSize(NULL, size);
    if (!result) goto done;
    S.out = PyBytes_AS_STRING(result);
    S.pos = 0;
    if (splice_all(&S, buf.len) != size) {
        Py_CLEAR(result);
        malformed();
    }
done:
    PyMem_Free(arr);
    PyBuffer_Release(&buf);
    return result;
}

/* ---- per-span checks --------------------------------------------------------------------- */
static int all_zero(const unsigned char *p, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

/* Count field `want` (wt 2) in [start, end); -1 if malformed. */
static Py_ssize_t count_field(const unsigned char *d, Py_ssize_t start, Py_ssize_t end, uint32_t want) {
    Py_ssize_t pos = start, n = 0;
    Field f;
    int r;
    while ((r = next_field(d, &pos, end, &f)) == 1)
        if (f.field == want && f.wt == 2) n++;
    return r < 0 ? -1 : n;
}

/* 1 if the span is fine, 0 if not. */
static int span_ok(const unsigned char *d, Py_ssize_t start, Py_ssize_t end, Py_ssize_t max_attrs) {
    Py_ssize_t pos = start, attrs = 0, events = 0, links = 0;
    Py_ssize_t tid = 0, sid = 0, pid = 0, tid_at = 0, sid_at = 0;
    Field f;
    int r;
    while ((r = next_field(d, &pos, end, &f)) == 1) {
        if (f.wt != 2) continue;
        Py_ssize_t len = f.end - f.start;
        switch (f.field) {
        case 1: tid = len; tid_at = f.start; break; /* last occurrence wins, as in protobuf */
        case 2: sid = len; sid_at = f.start; break;
        case 4: pid = len; break;
        case 9: attrs++; break;
        case 11: {
            events++;
            Py_ssize_t a = count_field(d, f.start, f.end, 3);
            if (a < 0 || a > max_attrs) return 0;
            break;
        }
        case 13: {
            links++;
            Py_ssize_t lp = f.start, lt = 0, ls = 0, la = 0;
            Field g;
            int r2;
            while ((r2 = next_field(d, &lp, f.end, &g)) == 1) {
                if (g.wt != 2) continue;
                if (g.field == 1) lt = g.end - g.start;
                else if (g.field == 2) ls = g.end - g.start;
                else if (g.field == 4) la++;
            }
            if (r2 < 0 || lt != 16 || ls != 8 || la > max_attrs) return 0;
            break;
        }
        default: break;
        }
    }
    if (r < 0) return 0;
    if (tid != 16 || all_zero(d + tid_at, 16)) return 0;
    if (sid != 8 || all_zero(d + sid_at, 8)) return 0;
    if (pid != 0 && pid != 8) return 0;
    return attrs <= max_attrs && events <= max_attrs && links <= max_attrs;
}

/* spans_ok(data, max_attrs) -> bool: every span's ids and counts within bounds. */
static PyObject *wire_spans_ok(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t max_attrs;
    if (!PyArg_ParseTuple(args, "y*n", &buf, &max_attrs)) return NULL;
    const unsigned char *d = buf.buf;
    Py_ssize_t pos = 0;
    Field rs, ss, sp;
    int r, ok = 1;
    while (ok && (r = next_field(d, &pos, buf.len, &rs)) == 1) {
        if (rs.field != 1 || rs.wt != 2) continue;
        Py_ssize_t rp = rs.start;
        int r2;
        while (ok && (r2 = next_field(d, &rp, rs.end, &ss)) == 1) {
            if (ss.field != 2 || ss.wt != 2) continue;
            Py_ssize_t sp_pos = ss.start;
            int r3;
            while (ok && (r3 = next_field(d, &sp_pos, ss.end, &sp)) == 1)
                if (sp.field == 2 && sp.wt == 2) ok = span_ok(d, sp.start, sp.end, max_attrs);
            if (ok && r3 < 0) ok = 0;
        }
        if (ok && r2 < 0) ok = 0;
    }
    if (ok && r < 0) ok = 0;
    PyBuffer_Release(&buf);
    return PyBool_FromLong(ok);
}

/* scan_span(data, start, end, keys_bytes, keys_str) -> (found, trace_id, start_ns, name).
 * found maps each attribute key in keys (the last occurrence wins, as when decoding) to its
 * string value, or True when the value is not a string. */
static PyObject *wire_scan_span(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t start, end;
    PyObject *kb, *ks;
    if (!PyArg_ParseTuple(args, "y*nnO!O!", &buf, &start, &end, &PyTuple_Type, &kb, &PyTuple_Type, &ks))
        return NULL;
    const unsigned char *d = buf.buf;
    PyObject *found = NULL, *result = NULL, *tid = NULL, *name = NULL;
    Py_ssize_t nk = PyTuple_GET_SIZE(kb), pos = start, tid_at = 0, tid_len = 0, name_at = 0, name_len = 0;
    uint64_t start_ns = 0;
    Field f;
    int r;
    if (start < 0 || end > buf.len || start > end || PyTuple_GET_SIZE(ks) != nk) {
        PyErr_SetString(PyExc_ValueError, "bad span range or keys");
        goto done;
    }
    found = PyDict_New();
    if (!found) goto done;
    while ((r = next_field(d, &pos, end, &f)) == 1) {
        if (f.field == 1 && f.wt == 2) {
            tid_at = f.start;
            tid_len = f.end - f.start;
        } else if (f.field == 5 && f.wt == 2) {
            name_at = f.start;
            name_len = f.end - f.start;
        } else if (f.field == 7 && f.wt == 1) {
            const unsigned char *q = d + f.start - 8; /* fixed64: little-endian on the wire */
            start_ns = 0;
            for (int b = 7; b >= 0; b--) start_ns = (start_ns << 8) | q[b];
        } else if (f.field == 9 && f.wt == 2) {
            Py_ssize_t kp = f.start, key_at = 0, key_len = -1, val_at = 0, val_len = -1;
            Field g;
            int r2;
            while ((r2 = next_field(d, &kp, f.end, &g)) == 1) {
                if (g.wt != 2) continue;
                if (g.field == 1) { key_at = g.start; key_len = g.end - g.start; }
                else if (g.field == 2) { val_at = g.start; val_len = g.end - g.start; }
            }
            if (r2 < 0 || key_len < 0) continue;
            for (Py_ssize_t k = 0; k < nk; k++) {
                PyObject *want = PyTuple_GET_ITEM(kb, k);
                if (!PyBytes_Check(want) || PyBytes_GET_SIZE(want) != key_len ||
                    memcmp(PyBytes_AS_STRING(want), d + key_at, (size_t)key_len) != 0)
                    continue;
                /* The value: a string when AnyValue's last set field is string_value (1). */
                PyObject *value = NULL;
                if (val_len >= 0) {
                    Py_ssize_t vp = val_at, s_at = 0, s_len = -1;
                    uint32_t last = 0;
                    int r3;
                    /* Only AnyValue's oneof members (1..7, with their own wire types) count. */
                    static const int oneof_wt[8] = {-1, 2, 0, 0, 1, 2, 2, 2};
                    while ((r3 = next_field(d, &vp, val_at + val_len, &g)) == 1) {
                        if (g.field < 1 || g.field > 7 || oneof_wt[g.field] != g.wt) continue;
                        last = g.field;
                        if (g.field == 1) { s_at = g.start; s_len = g.end - g.start; }
                    }
                    if (r3 == 0 && last == 1 && s_len >= 0) {
                        value = PyUnicode_DecodeUTF8((const char *)d + s_at, s_len, "surrogatepass");
                        if (!value) goto done;
                    }
                }
                if (!value) { value = Py_True; Py_INCREF(value); }
                int bad = PyDict_SetItem(found, PyTuple_GET_ITEM(ks, k), value);
                Py_DECREF(value);
                if (bad) goto done;
                break;
            }
        }
    }
    if (r < 0) { malformed(); goto done; }
    tid = PyBytes_FromStringAndSize((const char *)d + tid_at, tid_len);
    if (!tid) goto done;
    name = PyUnicode_DecodeUTF8((const char *)d + name_at, name_len, "replace");
    if (!name) goto done;
    result = Py_BuildValue("(OOKO)", found, tid, (unsigned long long)start_ns, name);
done:
    Py_XDECREF(found);
    Py_XDECREF(tid);
    Py_XDECREF(name);
    PyBuffer_Release(&buf);
    return result;
}

/* ---- scan_spans: the candidate spans of one request and what stamping reads of them ------- */
typedef struct {
    Py_ssize_t n;
    Py_ssize_t head[64]; /* by key length (63: 63 and longer): the first key of that length, or -1 */
    Py_ssize_t *next;    /* the next key of the same length bucket, or -1 */
    const char **ptr;
    Py_ssize_t *len;
    uint64_t *tail;      /* a key's last 8 bytes (keys of 8 bytes and more): compared before memcmp */
} KeySet;

static void keyset_free(KeySet *ks) {
    PyMem_Free(ks->next);
    PyMem_Free(ks->ptr);
    PyMem_Free(ks->len);
    PyMem_Free(ks->tail);
    ks->next = NULL;
    ks->ptr = NULL;
    ks->len = NULL;
    ks->tail = NULL;
}

static inline uint64_t tail8(const void *p, Py_ssize_t len) {
    uint64_t t;
    memcpy(&t, (const char *)p + len - 8, 8);
    return t;
}

/* t: a tuple of bytes, alive while ks is used. 0 ok, -1 with an exception set. */
static int keyset_init(KeySet *ks, PyObject *t) {
    ks->n = PyTuple_GET_SIZE(t);
    for (int b = 0; b < 64; b++) ks->head[b] = -1;
    size_t m = (size_t)(ks->n ? ks->n : 1);
    ks->next = PyMem_Malloc(m * sizeof(Py_ssize_t));
    ks->ptr = PyMem_Malloc(m * sizeof(char *));
    ks->len = PyMem_Malloc(m * sizeof(Py_ssize_t));
    ks->tail = PyMem_Malloc(m * sizeof(uint64_t));
    if (!ks->next || !ks->ptr || !ks->len || !ks->tail) {
        keyset_free(ks);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = ks->n - 1; k >= 0; k--) { /* built backwards: each bucket in key order */
        PyObject *b = PyTuple_GET_ITEM(t, k);
        if (!PyBytes_Check(b)) {
            keyset_free(ks);
            PyErr_SetString(PyExc_TypeError, "keys must be bytes");
            return -1;
        }
        ks->ptr[k] = PyBytes_AS_STRING(b);
        ks->len[k] = PyBytes_GET_SIZE(b);
        ks->tail[k] = ks->len[k] >= 8 ? tail8(ks->ptr[k], ks->len[k]) : 0;
        Py_ssize_t bucket = ks->len[k] < 63 ? ks->len[k] : 63;
        ks->next[k] = ks->head[bucket];
        ks->head[bucket] = k;
    }
    return 0;
}

/* Index of the (first) key equal to p[0:len] in ks, or -1. */
static inline Py_ssize_t keyset_find(const KeySet *ks, const unsigned char *p, Py_ssize_t len) {
    Py_ssize_t k = ks->head[len < 63 ? len : 63];
    if (k < 0) return -1;
    if (len >= 8) { /* keys of one length mostly differ in their last bytes ("gen_ai.*") */
        uint64_t t = tail8(p, len);
        for (; k >= 0; k = ks->next[k])
            if (ks->tail[k] == t && ks->len[k] == len && memcmp(ks->ptr[k], p, (size_t)len) == 0) return k;
        return -1;
    }
    for (; k >= 0; k = ks->next[k])
        if (ks->len[k] == len && memcmp(ks->ptr[k], p, (size_t)len) == 0) return k;
    return -1;
}

/* The key of the KeyValue in [start, end): its last field 1, as the decoder keeps it.
 * 1 found, 0 none, -1 malformed. */
static int kv_key(const unsigned char *d, Py_ssize_t start, Py_ssize_t end, Py_ssize_t *at, Py_ssize_t *len) {
    /* Fast path, the layout every encoder writes: the key (short), then at most the value. */
    if (end - start >= 2 && d[start] == 0x0a && d[start + 1] < 0x80) {
        Py_ssize_t k_end = start + 2 + d[start + 1], p = k_end;
        if (k_end <= end) {
            if (p < end && d[p] == 0x12) {
                Py_ssize_t q = p + 1;
                uint64_t n;
                if (read_varint(d, end, &q, &n) == 0 && n == (uint64_t)(end - q)) p = end;
            }
            if (p == end) {
                *at = start + 2;
                *len = d[start + 1];
                return 1;
            }
        }
    }
    Py_ssize_t pos = start;
    Field g;
    int r, got = 0;
    while ((r = next_field(d, &pos, end, &g)) == 1)
        if (g.field == 1 && g.wt == 2) { *at = g.start; *len = g.end - g.start; got = 1; }
    return r < 0 ? -1 : got;
}

/* The KeyValue's value as the decoder makes it: every `value` field (2) merged, i.e. the last
 * AnyValue oneof member set across all of them wins. *which: that member's field number (0:
 * none, -1: malformed); for string (1) its bytes, for int (3) / double (4) its 64 bits. */
static void kv_value(const unsigned char *d, Py_ssize_t start, Py_ssize_t end, int *which,
                     Py_ssize_t *s_at, Py_ssize_t *s_len, uint64_t *bits) {
    static const int oneof_wt[8] = {-1, 2, 0, 0, 1, 2, 2, 2};
    Py_ssize_t pos = start;
    Field g, h;
    int r;
    *which = 0;
    while ((r = next_field(d, &pos, end, &g)) == 1) {
        if (g.field != 2 || g.wt != 2) continue;
        Py_ssize_t vp = g.start;
        int r2;
        while ((r2 = next_field(d, &vp, g.end, &h)) == 1) {
            if (h.field < 1 || h.field > 7 || oneof_wt[h.field] != h.wt) continue;
            *which = (int)h.field;
            if (h.field == 1) { *s_at = h.start; *s_len = h.end - h.start; }
            else if (h.field == 3) { Py_ssize_t q = h.head; uint64_t tag; read_varint(d, h.end, &q, &tag); read_varint(d, h.end, &q, bits); }
            else if (h.field == 4) {
                const unsigned char *q = d + h.end - 8;
                uint64_t u = 0;
                for (int b = 7; b >= 0; b--) u = (u << 8) | q[b];
                *bits = u;
            }
        }
        if (r2 < 0) { *which = -1; return; }
    }
    if (r < 0) *which = -1;
}

static uint64_t fixed64_before(const unsigned char *d, Py_ssize_t end) {
    const unsigned char *q = d + end - 8; /* little-endian on the wire */
    uint64_t u = 0;
    for (int b = 7; b >= 0; b--) u = (u << 8) | q[b];
    return u;
}

#define MAX_NUMBER_KEYS 32

/* The first of keys [from, to) whose value is an int, or a double with an integral value, as a
 * Python int; None when there is none. which/bits: each key's last numeric value (0: none). */
static PyObject *first_count(const int *which, const uint64_t *bits, Py_ssize_t from, Py_ssize_t to) {
    for (Py_ssize_t k = from; k < to; k++) {
        if (which[k] == 3) return PyLong_FromLongLong((long long)(int64_t)bits[k]);
        if (which[k] == 4) {
            double x;
            memcpy(&x, &bits[k], sizeof x);
            /* float.is_integer: finite, and integral (every double from 2**52 up is) */
            if (x - x == 0 && (x >= 4503599627370496.0 || x <= -4503599627370496.0 || x == (double)(long long)x))
                return PyLong_FromDouble(x);
        }
    }
    Py_RETURN_NONE;
}

/* One candidate span's tuple (see wire_scan_spans), or NULL with an exception set. */
static PyObject *scan_one(const unsigned char *d, Py_ssize_t i, Py_ssize_t r_at, Py_ssize_t s_at_,
                          Py_ssize_t start, Py_ssize_t end,
                          const KeySet *keys, PyObject *keys_s, const KeySet *nums, PyObject *groups) {
    int num_which[MAX_NUMBER_KEYS] = {0};
    uint64_t num_bits[MAX_NUMBER_KEYS];
    Py_ssize_t pos = start, tid_at = 0, tid_len = 0, sid_at = 0, sid_len = 0, name_at = 0, name_len = 0;
    uint64_t start_ns = 0, end_ns = 0;
    long status = 0;
    Field f, g;
    int r;
    PyObject *local[64] = {NULL};
    PyObject **slot = keys->n <= 64 ? local : PyMem_Calloc((size_t)keys->n, sizeof(PyObject *));
    PyObject *found = NULL, *counts = NULL, *result = NULL;
    PyObject *tid = NULL, *sid = NULL, *name = NULL;
    if (!slot) { PyErr_NoMemory(); return NULL; }
    while ((r = next_field(d, &pos, end, &f)) == 1) {
        if (f.wt == 2 && f.field == 1) { tid_at = f.start; tid_len = f.end - f.start; }
        else if (f.wt == 2 && f.field == 2) { sid_at = f.start; sid_len = f.end - f.start; }
        else if (f.wt == 2 && f.field == 5) { name_at = f.start; name_len = f.end - f.start; }
        else if (f.wt == 1 && f.field == 7) start_ns = fixed64_before(d, f.end);
        else if (f.wt == 1 && f.field == 8) end_ns = fixed64_before(d, f.end);
        else if (f.wt == 2 && f.field == 15) { /* Status, merged: its last code (field 3) wins */
            Py_ssize_t sp = f.start;
            int r2;
            while ((r2 = next_field(d, &sp, f.end, &g)) == 1) {
                if (g.field == 3 && g.wt == 0) {
                    Py_ssize_t q = g.head;
                    uint64_t tag, v = 0;
                    read_varint(d, g.end, &q, &tag);
                    read_varint(d, g.end, &q, &v);
                    status = (long)(int32_t)(uint32_t)v; /* an int32 enum */
                }
            }
            if (r2 < 0) { malformed(); goto done; }
        } else if (f.wt == 2 && f.field == 9) {
            Py_ssize_t key_at = 0, key_len = 0;
            int kr = kv_key(d, f.start, f.end, &key_at, &key_len);
            if (kr <= 0) continue;
            Py_ssize_t k = keyset_find(keys, d + key_at, key_len), n = keyset_find(nums, d + key_at, key_len);
            if (k < 0 && n < 0) continue;
            int which;
            Py_ssize_t s_at = 0, s_len = 0;
            uint64_t bits = 0;
            kv_value(d, f.start, f.end, &which, &s_at, &s_len, &bits);
            if (k >= 0) {
                PyObject *value;
                if (which == 1) {
                    value = PyUnicode_DecodeUTF8((const char *)d + s_at, s_len, "surrogatepass");
                    if (!value) goto done;
                } else {
                    value = Py_True;
                    Py_INCREF(value);
                }
                Py_XSETREF(slot[k], value); /* the last occurrence wins */
            }
            if (n >= 0 && (which == 3 || which == 4)) { /* the last numeric occurrence wins */
                num_which[n] = which;
                num_bits[n] = bits;
            }
        }
    }
    if (r < 0) { malformed(); goto done; }
    tid = PyBytes_FromStringAndSize((const char *)d + tid_at, tid_len);
    sid = PyBytes_FromStringAndSize((const char *)d + sid_at, sid_len);
    name = PyUnicode_DecodeUTF8((const char *)d + name_at, name_len, "replace");
    if (!tid || !sid || !name) goto done;
    Py_ssize_t nfound = 0, at = 0;
    for (Py_ssize_t k = 0; k < keys->n; k++) nfound += slot[k] != NULL;
    found = PyTuple_New(nfound); /* (key, value) pairs, in the order of keys */
    if (!found) goto done;
    for (Py_ssize_t k = 0; k < keys->n; k++) {
        if (!slot[k]) continue;
        PyObject *pair = PyTuple_Pack(2, PyTuple_GET_ITEM(keys_s, k), slot[k]);
        if (!pair) goto done;
        PyTuple_SET_ITEM(found, at++, pair);
    }
    Py_ssize_t ngroups = PyTuple_GET_SIZE(groups), from = 0;
    counts = PyTuple_New(ngroups);
    if (!counts) goto done;
    for (Py_ssize_t k = 0; k < ngroups; k++) {
        Py_ssize_t to = from + PyLong_AsSsize_t(PyTuple_GET_ITEM(groups, k));
        PyObject *count = first_count(num_which, num_bits, from, to);
        if (!count) goto done;
        PyTuple_SET_ITEM(counts, k, count);
        from = to;
    }
    result = Py_BuildValue("(nnnOOKOOKlO)", i, r_at, s_at_, found, tid, (unsigned long long)start_ns, name,
                           sid, (unsigned long long)end_ns, status, counts);
done:
    for (Py_ssize_t k = 0; k < keys->n; k++) Py_XDECREF(slot[k]);
    if (slot != local) PyMem_Free(slot);
    Py_XDECREF(found);
    Py_XDECREF(counts);
    Py_XDECREF(tid);
    Py_XDECREF(sid);
    Py_XDECREF(name);
    return result;
}

/* Does the Span.Event in [start, end) have the name `want` (its last field 2)? */
static int event_named(const unsigned char *d, Py_ssize_t start, Py_ssize_t end, const char *want,
                       Py_ssize_t want_len) {
    Py_ssize_t pos = start, at = 0, len = 0;
    Field g;
    int r;
    while ((r = next_field(d, &pos, end, &g)) == 1)
        if (g.field == 2 && g.wt == 2) { at = g.start; len = g.end - g.start; }
    return r == 0 && len == want_len && memcmp(d + at, want, (size_t)want_len) == 0;
}

/* Might the KeyValue in [start, end) make Langfuse's observation type mapper throw, were its key
 * one the mapper looks up? Its value as the decoder makes it (kv_value) is set and is not a
 * string outside `values` (the names the mapper throws on): a poison string, or any other kind
 * (an array is looked up by its String(), a number or boolean can break a string method). A
 * suspect only: the exact judgement is Python's (promptstamp_contract.langfuse_typing). */
static int suspect_value(const unsigned char *d, Py_ssize_t start, Py_ssize_t end, const KeySet *values) {
    int which;
    Py_ssize_t s_at = 0, s_len = 0;
    uint64_t bits = 0;
    /* Fast path, the layout every encoder writes: a short key, then one value holding one short
     * string, filling the KeyValue (kv_value below is the definition). */
    if (end - start >= 2 && d[start] == 0x0a && d[start + 1] < 0x80) {
        Py_ssize_t v = start + 2 + d[start + 1];
        if (end - v >= 4 && d[v] == 0x12 && d[v + 1] == end - v - 2 && d[v + 2] == 0x0a && d[v + 3] == end - v - 4)
            return keyset_find(values, d + v + 4, end - v - 4) >= 0;
    }
    kv_value(d, start, end, &which, &s_at, &s_len, &bits);
    if (which != 1) return which != 0; /* -1 (malformed): suspect too */
    return keyset_find(values, d + s_at, s_len) >= 0;
}

/* The keys a span's attributes are looked up in, one set for one lookup per attribute: `needs`
 * (flag 1), `markers` (2) and `poison` (4); flags[k]: every set key k is in. */
typedef struct {
    KeySet ks;
    unsigned char *flags;
    PyObject *all; /* the keys' bytes objects, alive while ks is used */
    uint64_t poison_lens; /* bit min(len, 63) set for each poison key's length */
} KeyFlags;

static void keyflags_free(KeyFlags *kf) {
    keyset_free(&kf->ks);
    PyMem_Free(kf->flags);
    kf->flags = NULL;
    Py_CLEAR(kf->all);
}

/* needs, markers, poison: tuples of bytes. 0 ok, -1 with an exception set. */
static int keyflags_init(KeyFlags *kf, PyObject *needs, PyObject *markers, PyObject *poison) {
    PyObject *sets[3] = {needs, markers, poison};
    KeySet each[3] = {{0}, {0}, {0}};
    int rc = -1;
    PyObject *two = PySequence_Concat(needs, markers);
    kf->all = two ? PySequence_Concat(two, poison) : NULL;
    Py_XDECREF(two);
    if (!kf->all || keyset_init(&kf->ks, kf->all)) return -1;
    kf->flags = PyMem_Calloc((size_t)(kf->ks.n ? kf->ks.n : 1), 1);
    if (!kf->flags) { PyErr_NoMemory(); return -1; }
    for (int j = 0; j < 3; j++)
        if (keyset_init(&each[j], sets[j])) goto done;
    for (Py_ssize_t k = 0; k < kf->ks.n; k++)
        for (int j = 0; j < 3; j++)
            if (keyset_find(&each[j], (const unsigned char *)kf->ks.ptr[k], kf->ks.len[k]) >= 0)
                kf->flags[k] |= (unsigned char)(1 << j);
    kf->poison_lens = 0;
    for (Py_ssize_t k = 0; k < each[2].n; k++)
        kf->poison_lens |= (uint64_t)1 << (each[2].len[k] < 63 ? each[2].len[k] : 63);
    rc = 0;
done:
    for (int j = 0; j < 3; j++) keyset_free(&each[j]);
    return rc;
}

/* Which of the sets the key p[0:len] is in (KeyFlags' flags), 0 for none. */
static inline int keyflags_of(const KeyFlags *kf, const unsigned char *p, Py_ssize_t len) {
    Py_ssize_t k = keyset_find(&kf->ks, p, len);
    return k < 0 ? 0 : kf->flags[k];
}

#define NEED 1
#define MARKER 2
#define POISON 4

/* scan_spans(data, starts, ends, scope_counts, needs, markers, keys_b, keys_s, nums_b, groups,
 * event[, poison, poison_values]) -> (candidates, event_spans[, suspects]).
 * candidates: (i, r, s, found, trace_id, start_ns, name, span_id, end_ns, status_code, counts)
 * in span order, for every span with an attribute keyed by any of `needs` and one keyed by any of
 * `markers` (keys as the decoder reads them: exact, whole keys), or every span when `needs` is
 * empty; (r, s): its resource_spans and
 * scope_spans. found: as scan_span, over keys_b, but as (key, value) pairs in keys' order. counts: per group of nums_b (groups: their
 * sizes, in order; a key in one group only), the value of the group's first key whose last int
 * or double value is an int or integral (see first_count), else None.
 * event_spans: the spans with an event named `event` (none looked for when it is empty).
 * suspects (only when `poison` is given): the spans with an attribute keyed by any of `poison`
 * whose value is suspect (suspect_value, over poison_values), whatever else they carry. */
static PyObject *wire_scan_spans(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *starts, *ends, *counts, *needs, *markers, *kb, *ks, *nb, *ns, *event;
    PyObject *poison = NULL, *pvalues = NULL;
    if (!PyArg_ParseTuple(args, "y*O!O!O!O!O!O!O!O!O!O!|O!O!", &buf, &PyList_Type, &starts, &PyList_Type, &ends,
                          &PyList_Type, &counts, &PyTuple_Type, &needs, &PyTuple_Type, &markers,
                          &PyTuple_Type, &kb, &PyTuple_Type, &ks, &PyTuple_Type, &nb, &PyTuple_Type, &ns,
                          &PyBytes_Type, &event, &PyTuple_Type, &poison, &PyTuple_Type, &pvalues))
        return NULL;
    const unsigned char *d = buf.buf;
    PyObject *out = PyList_New(0), *events = PyList_New(0), *suspects = PyList_New(0), *result = NULL;
    KeySet keys = {0}, nums = {0}, pv = {0};
    KeyFlags kf = {{0}, NULL, NULL, 0};
    PyObject *no_keys = PyTuple_New(0);
    Py_ssize_t nspans = PyList_GET_SIZE(starts);
    Py_ssize_t need_any = PyTuple_GET_SIZE(needs), event_len = PyBytes_GET_SIZE(event);
    const char *event_p = PyBytes_AS_STRING(event);
    /* Where span i is: resource r, scope s, `left` spans of that scope still to come. */
    Py_ssize_t r_at = 0, s_at = -1, left = 0, nres = PyList_GET_SIZE(counts);
    if (!out || !events || !suspects || !no_keys) goto done;
    if ((poison == NULL) != (pvalues == NULL)) {
        PyErr_SetString(PyExc_TypeError, "poison and poison_values go together");
        goto done;
    }
    if (PyList_GET_SIZE(ends) != nspans || PyTuple_GET_SIZE(ks) != PyTuple_GET_SIZE(kb) ||
        PyTuple_GET_SIZE(nb) > MAX_NUMBER_KEYS) {
        PyErr_SetString(PyExc_ValueError, "starts/ends or keys differ in length, or too many number keys");
        goto done;
    }
    Py_ssize_t grouped = 0;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(ns); k++) {
        Py_ssize_t size = PyLong_AsSsize_t(PyTuple_GET_ITEM(ns, k));
        if (size < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "negative group size");
            goto done;
        }
        grouped += size;
    }
    if (grouped != PyTuple_GET_SIZE(nb)) {
        PyErr_SetString(PyExc_ValueError, "groups do not cover the number keys");
        goto done;
    }
    if (keyflags_init(&kf, needs, markers, poison ? poison : no_keys) || keyset_init(&keys, kb) ||
        keyset_init(&nums, nb) || keyset_init(&pv, pvalues ? pvalues : no_keys)) goto done;
    for (Py_ssize_t i = 0; i < nspans; i++) {
        while (left == 0) { /* the next non-empty scope */
            PyObject *scopes = r_at < nres ? PyList_GET_ITEM(counts, r_at) : NULL;
            if (!scopes || !PyList_Check(scopes)) {
                PyErr_SetString(PyExc_ValueError, "scope counts do not match the spans");
                goto done;
            }
            if (++s_at >= PyList_GET_SIZE(scopes)) { r_at++; s_at = -1; continue; }
            left = PyLong_AsSsize_t(PyList_GET_ITEM(scopes, s_at));
            if (left < 0) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "negative scope count");
                goto done;
            }
        }
        left--;
        Py_ssize_t s = PyLong_AsSsize_t(PyList_GET_ITEM(starts, i));
        Py_ssize_t e = PyLong_AsSsize_t(PyList_GET_ITEM(ends, i));
        if ((s == -1 || e == -1) && PyErr_Occurred()) goto done;
        if (s < 0 || e > buf.len || s > e) {
            PyErr_SetString(PyExc_ValueError, "span range outside the data");
            goto done;
        }
        Py_ssize_t pos = s;
        Field f;
        int r, has_need = 0, has_marker = 0, has_event = 0, has_suspect = 0;
        while ((r = next_field(d, &pos, e, &f)) == 1) {
            if (f.wt != 2) continue;
            if (f.field == 9) {
                Py_ssize_t key_at = 0, key_len = 0;
                if (kv_key(d, f.start, f.end, &key_at, &key_len) <= 0) continue;
                if (has_need && has_marker &&  /* a candidate: only a poison key can add anything */
                    (has_suspect || !(kf.poison_lens >> (key_len < 63 ? key_len : 63) & 1))) continue;
                int in = keyflags_of(&kf, d + key_at, key_len);
                if (!in) continue;
                has_need |= in & NEED;
                has_marker |= in & MARKER;
                if ((in & POISON) && !has_suspect) has_suspect = suspect_value(d, f.start, f.end, &pv);
            } else if (f.field == 11 && event_len && !has_event) {
                has_event = event_named(d, f.start, f.end, event_p, event_len);
            }
        }
        if (r < 0) { malformed(); goto done; }
        if (has_event) {
            PyObject *idx = PyLong_FromSsize_t(i);
            if (!idx || PyList_Append(events, idx)) { Py_XDECREF(idx); goto done; }
            Py_DECREF(idx);
        }
        if (has_suspect) {
            PyObject *idx = PyLong_FromSsize_t(i);
            if (!idx || PyList_Append(suspects, idx)) { Py_XDECREF(idx); goto done; }
            Py_DECREF(idx);
        }
        if (need_any && (!has_need || !has_marker)) continue; /* needs empty: every span */
        PyObject *one = scan_one(d, i, r_at, s_at, s, e, &keys, ks, &nums, ns);
        if (!one || PyList_Append(out, one)) { Py_XDECREF(one); goto done; }
        Py_DECREF(one);
    }
    result = poison ? PyTuple_Pack(3, out, events, suspects) : PyTuple_Pack(2, out, events);
done:
    keyflags_free(&kf);
    keyset_free(&keys);
    keyset_free(&nums);
    keyset_free(&pv);
    Py_XDECREF(out);
    Py_XDECREF(events);
    Py_XDECREF(suspects);
    Py_XDECREF(no_keys);
    PyBuffer_Release(&buf);
    return result;
}

/* 1 when the span in [start, end) has what triage looks for, 0 when not, -1 when malformed. */
static int span_wanted(const unsigned char *d, Py_ssize_t start, Py_ssize_t end, const KeyFlags *kf,
                       const KeySet *pv, const char *event_p, Py_ssize_t event_len) {
    Py_ssize_t pos = start;
    Field f;
    int r;
    while ((r = next_field(d, &pos, end, &f)) == 1) {
        if (f.wt != 2) continue;
        if (f.field == 9) {
            Py_ssize_t key_at = 0, key_len = 0;
            if (kv_key(d, f.start, f.end, &key_at, &key_len) <= 0) continue;
            int in = keyflags_of(kf, d + key_at, key_len);
            if (in & NEED) return 1;
            if ((in & POISON) && suspect_value(d, f.start, f.end, pv)) return 1;
        } else if (f.field == 11 && event_len && event_named(d, f.start, f.end, event_p, event_len)) {
            return 1;
        }
    }
    return r < 0 ? -1 : 0;
}

/* triage(data, needs, event, poison, poison_values) -> bool: does any span of the encoded
 * request have one of the three things scan_spans finds: an attribute keyed by any of `needs`, an
 * event named `event`, or a suspect value under a `poison` key? One walk, nothing built,
 * stopping at the first such span (what the relay's intake asks of a request before deciding to
 * forward it as it came). WireError when the bytes do not walk. */
static PyObject *wire_triage(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *needs, *event, *poison, *pvalues;
    if (!PyArg_ParseTuple(args, "y*O!O!O!O!", &buf, &PyTuple_Type, &needs, &PyBytes_Type, &event,
                          &PyTuple_Type, &poison, &PyTuple_Type, &pvalues))
        return NULL;
    const unsigned char *d = buf.buf;
    KeySet pv = {0};
    KeyFlags kf = {{0}, NULL, NULL, 0};
    PyObject *result = NULL, *no_keys = PyTuple_New(0);
    Py_ssize_t pos = 0, event_len = PyBytes_GET_SIZE(event);
    const char *event_p = PyBytes_AS_STRING(event);
    Field rs, ss, sp;
    int r = 0, r2 = 0, r3 = 0, found = 0;
    if (!no_keys || keyflags_init(&kf, needs, no_keys, poison) || keyset_init(&pv, pvalues)) goto done;
    while (!found && (r = next_field(d, &pos, buf.len, &rs)) == 1) {
        if (rs.field != 1 || rs.wt != 2) continue;
        Py_ssize_t rp = rs.start;
        while (!found && (r2 = next_field(d, &rp, rs.end, &ss)) == 1) {
            if (ss.field != 2 || ss.wt != 2) continue;
            Py_ssize_t sp_pos = ss.start;
            while (!found && (r3 = next_field(d, &sp_pos, ss.end, &sp)) == 1) {
                if (sp.field != 2 || sp.wt != 2) continue;
                found = span_wanted(d, sp.start, sp.end, &kf, &pv, event_p, event_len);
                if (found < 0) { malformed(); goto done; }
            }
            if (r3 < 0) { malformed(); goto done; }
        }
        if (r2 < 0) { malformed(); goto done; }
    }
    if (r < 0) { malformed(); goto done; }
    result = PyBool_FromLong(found);
done:
    keyflags_free(&kf);
    keyset_free(&pv);
    Py_XDECREF(no_keys);
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"scan_spans", wire_scan_spans, METH_VARARGS, "scan_spans(data, starts, ends, scope_counts, needs, markers, keys_b, keys_s, nums_b, groups, event[, poison, poison_values]) -> (candidates, event_spans[, suspects])"},
    {"triage", wire_triage, METH_VARARGS, "triage(data, needs, event, poison, poison_values) -> bool"},
    {"scan_span", wire_scan_span, METH_VARARGS, "scan_span(data, start, end, keys_bytes, keys_str) -> (found, trace_id, start_ns, name)"},
    {"walk", wire_walk, METH_VARARGS, "walk(data) -> (starts, ends, scope_counts)"},
    {"marked", wire_marked, METH_VARARGS, "marked(data, starts, ends, markers, among) -> list"},
    {"splice", wire_splice, METH_VARARGS, "splice(data, edits, delete) -> bytes"},
    {"spans_ok", wire_spans_ok, METH_VARARGS, "spans_ok(data, max_attrs) -> bool"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_wirec", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__wirec(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    WireError = PyErr_NewException("promptstamp_relay.wire._wirec.WireError", PyExc_ValueError, NULL);
    if (!WireError || PyModule_AddObject(m, "WireError", WireError)) {
        Py_XDECREF(WireError);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
