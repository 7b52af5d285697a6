/*
 * driftgate: a fast path that decodes a batch of plain-JSON prediction (or
 * label) events straight into columns.
 *
 * Parsing is done by yyjson (vendored in third_party/yyjson, MIT licence in
 * its LICENSE): strict RFC 8259, UTF-8 validated, numbers correctly rounded, big
 * numbers read as raw text. This file only walks each parsed document and
 * copies typed values into caller-provided buffers (numpy arrays, through the
 * buffer protocol) and Python lists.
 *
 * It is a fast path, not a second validator: every record must be one the
 * msgspec decoder in monitor/ingest/codec.py would decode to exactly these values.
 * Whenever that is not certain (a parse error, a wrong type, a missing
 * required field, a duplicated known key, a string timestamp, a big number,
 * a deep nesting, a string length out of bounds, an integer decision other
 * than 0/1, ...) the call gives up and returns the index of that record; the
 * caller then decodes the whole batch with msgspec, which finds and explains
 * the bad records. Range checks (score in [0, 1], timestamps, amounts, known
 * models) are left to the caller, which applies them to whole columns.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#include "yyjson.h"

/* known top-level fields, in this order in the `keys` argument */
enum { K_EVENT_ID, K_MODEL, K_VERSION, K_TS, K_SCORE, K_DECISION, K_AMOUNT, K_FEATURES,
       N_KEYS };
#define REQUIRED ((1u << K_EVENT_ID) | (1u << K_MODEL) | (1u << K_VERSION) | \
                  (1u << K_TS) | (1u << K_SCORE))
/* unknown fields are skipped; deeper containers than this go to msgspec */
#define MAX_SKIP_DEPTH 32

typedef struct {
    const char *ptr;
    Py_ssize_t len;
} name_t;

typedef struct {
    name_t top[N_KEYS];
    name_t *feat;        /* numeric features, then categorical ones */
    Py_ssize_t n_num;
    Py_ssize_t n_feat;
    unsigned char *seen; /* per feature, reset per record */
} spec_t;

static int
name_eq(yyjson_val *key, const name_t *name)
{
    return (Py_ssize_t)yyjson_get_len(key) == name->len &&
           memcmp(yyjson_get_str(key), name->ptr, (size_t)name->len) == 0;
}

/* depth of a value, counting down from `budget`; -1 once beyond it */
static int
depth_within(yyjson_val *val, int budget)
{
    if (!yyjson_is_ctn(val)) {
        return 0;
    }
    if (budget <= 0) {
        return -1;
    }
    size_t idx, max;
    yyjson_val *k, *v;
    if (yyjson_is_arr(val)) {
        yyjson_arr_foreach(val, idx, max, v) {
            if (depth_within(v, budget - 1) < 0) {
                return -1;
            }
        }
    } else {
        yyjson_obj_foreach(val, idx, max, k, v) {
            if (depth_within(v, budget - 1) < 0) {
                return -1;
            }
        }
    }
    return 0;
}

/* a JSON number as a double, as msgspec decodes it into a `float` field;
 * 0 if the value is not a number (bool, null, raw big number, ...) */
static int
as_double(yyjson_val *val, double *out)
{
    switch (yyjson_get_tag(val)) {
    case YYJSON_TYPE_NUM | YYJSON_SUBTYPE_REAL:
        *out = yyjson_get_real(val);
        return isfinite(*out);
    case YYJSON_TYPE_NUM | YYJSON_SUBTYPE_UINT:
        *out = (double)yyjson_get_uint(val);
        return 1;
    case YYJSON_TYPE_NUM | YYJSON_SUBTYPE_SINT:
        *out = (double)yyjson_get_sint(val);
        return 1;
    default:
        return 0;
    }
}

/* a str of 1..max_chars code points, reusing `*prev` when equal */
static PyObject *
as_name(yyjson_val *val, Py_ssize_t max_chars, PyObject **prev)
{
    if (!yyjson_is_str(val)) {
        return NULL;
    }
    const char *s = yyjson_get_str(val);
    Py_ssize_t n = (Py_ssize_t)yyjson_get_len(val);
    if (*prev != NULL) {
        Py_ssize_t plen;
        const char *p = PyUnicode_AsUTF8AndSize(*prev, &plen);
        if (p != NULL && plen == n && memcmp(p, s, (size_t)n) == 0) {
            Py_INCREF(*prev);
            return *prev;
        }
    }
    PyObject *str = PyUnicode_DecodeUTF8(s, n, "strict");
    if (str == NULL) {
        PyErr_Clear();
        return NULL;
    }
    Py_ssize_t chars = PyUnicode_GET_LENGTH(str);
    if (chars < 1 || chars > max_chars) {
        Py_DECREF(str);
        return NULL;
    }
    Py_XSETREF(*prev, Py_NewRef(str));
    return str;
}

/* a categorical value as msgspec decodes `str | int | float | bool | None` */
static PyObject *
as_category(yyjson_val *val)
{
    switch (yyjson_get_tag(val)) {
    case YYJSON_TYPE_NULL | YYJSON_SUBTYPE_NONE:
        Py_RETURN_NONE;
    case YYJSON_TYPE_BOOL | YYJSON_SUBTYPE_TRUE:
        Py_RETURN_TRUE;
    case YYJSON_TYPE_BOOL | YYJSON_SUBTYPE_FALSE:
        Py_RETURN_FALSE;
    case YYJSON_TYPE_NUM | YYJSON_SUBTYPE_UINT:
        return PyLong_FromUnsignedLongLong(yyjson_get_uint(val));
    case YYJSON_TYPE_NUM | YYJSON_SUBTYPE_SINT:
        return PyLong_FromLongLong(yyjson_get_sint(val));
    case YYJSON_TYPE_NUM | YYJSON_SUBTYPE_REAL: {
        double d = yyjson_get_real(val);
        return isfinite(d) ? PyFloat_FromDouble(d) : NULL;
    }
    case YYJSON_TYPE_STR | YYJSON_SUBTYPE_NONE:
    case YYJSON_TYPE_STR | YYJSON_SUBTYPE_NOESC: {
        PyObject *s = PyUnicode_DecodeUTF8(yyjson_get_str(val),
                                           (Py_ssize_t)yyjson_get_len(val), "strict");
        if (s == NULL) {
            PyErr_Clear();
        }
        return s;
    }
    default:
        return NULL;
    }
}

#define FIELD_UNKNOWN (-1)
#define FIELD_GIVE_UP (-2)

/* which of `names` the object key `key` is; FIELD_UNKNOWN for another key
 * (its value is skipped), FIELD_GIVE_UP for a repeated known key or an unknown
 * value nested too deeply (msgspec decides those) */
static int
field_of(yyjson_val *key, yyjson_val *val, const name_t *names, int n, unsigned *seen)
{
    for (int t = 0; t < n; t++) {
        if (name_eq(key, &names[t])) {
            if (*seen & (1u << t)) {
                return FIELD_GIVE_UP;
            }
            *seen |= 1u << t;
            return t;
        }
    }
    return depth_within(val, MAX_SKIP_DEPTH) < 0 ? FIELD_GIVE_UP : FIELD_UNKNOWN;
}

/* the event id of record `row` into `ids`; 0 to give up */
static int
set_event_id(yyjson_val *val, PyObject *ids, Py_ssize_t row)
{
    PyObject *none = NULL;
    PyObject *s = as_name(val, 256, &none);
    Py_XDECREF(none);
    if (s == NULL) {
        return 0;
    }
    PyList_SET_ITEM(ids, row, s);
    return 1;
}

/* the features object of record `row`; 0 to give up */
static int
read_features(yyjson_val *obj, spec_t *spec, Py_ssize_t row, double *numeric,
              PyObject **cat_lists)
{
    if (!yyjson_is_obj(obj)) {
        return 0;
    }
    Py_ssize_t n_feat = spec->n_feat, n_num = spec->n_num;
    memset(spec->seen, 0, (size_t)n_feat);
    double *out = numeric + row * n_num;
    for (Py_ssize_t j = 0; j < n_num; j++) {
        out[j] = NAN;
    }
    size_t idx, max;
    yyjson_val *k, *v;
    Py_ssize_t hint = 0;
    yyjson_obj_foreach(obj, idx, max, k, v) {
        Py_ssize_t j = -1;
        /* features usually come in the configured order: start at the hint */
        for (Py_ssize_t t = 0; t < n_feat; t++) {
            Py_ssize_t c = hint + t;
            if (c >= n_feat) {
                c -= n_feat;
            }
            if (name_eq(k, &spec->feat[c])) {
                j = c;
                break;
            }
        }
        if (j < 0) {
            if (depth_within(v, MAX_SKIP_DEPTH) < 0) {
                return 0;
            }
            continue;
        }
        if (spec->seen[j]) {
            return 0; /* duplicated key: let msgspec decide */
        }
        spec->seen[j] = 1;
        hint = j + 1 < n_feat ? j + 1 : 0;
        if (j < n_num) {
            if (yyjson_is_null(v)) {
                continue;
            }
            if (!as_double(v, &out[j])) {
                return 0;
            }
        } else {
            PyObject *item = as_category(v);
            if (item == NULL) {
                return 0;
            }
            PyObject *list = cat_lists[j - n_num];
            /* the list holds None at `row` already */
            PyList_SET_ITEM(list, row, item);
            Py_DECREF(Py_None);
        }
    }
    return 1;
}

typedef struct {
    double *ts, *score, *amount, *numeric;
    signed char *decision;
} outbufs_t;

/* one record; 0 to give up */
static int
read_record(yyjson_val *root, spec_t *spec, Py_ssize_t row, outbufs_t *o,
            PyObject *ids, PyObject *models, PyObject *versions, PyObject **cat_lists,
            PyObject **prev_model, PyObject **prev_version)
{
    if (!yyjson_is_obj(root)) {
        return 0;
    }
    unsigned seen = 0;
    o->decision[row] = -1;
    o->amount[row] = NAN;
    size_t idx, max;
    yyjson_val *k, *v;
    int have_features = 0;
    yyjson_obj_foreach(root, idx, max, k, v) {
        int f = field_of(k, v, spec->top, N_KEYS, &seen);
        if (f == FIELD_GIVE_UP) {
            return 0;
        }
        PyObject *s;
        switch (f) {
        case FIELD_UNKNOWN:
            break;
        case K_EVENT_ID:
            if (!set_event_id(v, ids, row)) {
                return 0;
            }
            break;
        case K_MODEL:
            if ((s = as_name(v, 128, prev_model)) == NULL) {
                return 0;
            }
            PyList_SET_ITEM(models, row, s);
            break;
        case K_VERSION:
            if ((s = as_name(v, 128, prev_version)) == NULL) {
                return 0;
            }
            PyList_SET_ITEM(versions, row, s);
            break;
        case K_TS:
            if (!as_double(v, &o->ts[row])) {
                return 0; /* RFC 3339 strings go to msgspec */
            }
            break;
        case K_SCORE:
            if (!as_double(v, &o->score[row])) {
                return 0;
            }
            break;
        case K_DECISION:
            switch (yyjson_get_tag(v)) {
            case YYJSON_TYPE_NULL | YYJSON_SUBTYPE_NONE:
                break;
            case YYJSON_TYPE_BOOL | YYJSON_SUBTYPE_TRUE:
                o->decision[row] = 1;
                break;
            case YYJSON_TYPE_BOOL | YYJSON_SUBTYPE_FALSE:
                o->decision[row] = 0;
                break;
            case YYJSON_TYPE_NUM | YYJSON_SUBTYPE_UINT:
                if (yyjson_get_uint(v) > 1) {
                    return 0;
                }
                o->decision[row] = (signed char)yyjson_get_uint(v);
                break;
            default:
                return 0;
            }
            break;
        case K_AMOUNT:
            if (!yyjson_is_null(v) && !as_double(v, &o->amount[row])) {
                return 0;
            }
            break;
        case K_FEATURES:
            if (!read_features(v, spec, row, o->numeric, cat_lists)) {
                return 0;
            }
            have_features = 1;
            break;
        }
    }
    if ((seen & REQUIRED) != REQUIRED) {
        return 0;
    }
    if (!have_features) {
        double *out = o->numeric + row * spec->n_num;
        for (Py_ssize_t j = 0; j < spec->n_num; j++) {
            out[j] = NAN;
        }
    }
    return 1;
}

/* reads the parsed record `row`; 0 to leave the batch to msgspec */
typedef int (*record_reader)(yyjson_val *root, Py_ssize_t row, void *ctx);

#define READ_ALL_DONE ((Py_ssize_t)-1)
#define READ_ERROR ((Py_ssize_t)-2)

/* Parse every value of the list with yyjson (one reused pool, sized for the
 * longest value) and hand each document to `read`. Returns READ_ALL_DONE when
 * every record was read, the index of the first record left to msgspec (a
 * value that is not bytes, does not parse, or that `read` refuses), or
 * READ_ERROR with a Python exception set. */
static Py_ssize_t
read_all(PyObject *values, record_reader read, void *ctx)
{
    Py_ssize_t n = PyList_GET_SIZE(values);
    size_t max_len = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        if (!PyBytes_Check(v)) {
            return i;
        }
        if ((size_t)PyBytes_GET_SIZE(v) > max_len) {
            max_len = (size_t)PyBytes_GET_SIZE(v);
        }
    }
    const yyjson_read_flag flags = YYJSON_READ_BIGNUM_AS_RAW;
    size_t pool_size = yyjson_read_max_memory_usage(max_len, flags);
    void *pool = PyMem_Malloc(pool_size ? pool_size : 64);
    if (pool == NULL) {
        PyErr_NoMemory();
        return READ_ERROR;
    }
    yyjson_alc alc;
    Py_ssize_t bail = READ_ALL_DONE;
    for (Py_ssize_t i = 0; i < n && bail == READ_ALL_DONE; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        if (!yyjson_alc_pool_init(&alc, pool, pool_size)) {
            bail = i;
            break;
        }
        yyjson_doc *doc = yyjson_read_opts(PyBytes_AS_STRING(v), (size_t)PyBytes_GET_SIZE(v),
                                           flags, &alc, NULL);
        if (doc == NULL) {
            bail = i;
            break;
        }
        if (!read(yyjson_doc_get_root(doc), i, ctx)) {
            bail = i;
        }
        yyjson_doc_free(doc);
    }
    PyMem_Free(pool);
    return PyErr_Occurred() ? READ_ERROR : bail;
}

typedef struct {
    spec_t *spec;
    outbufs_t *o;
    PyObject *ids, *models, *versions;
    PyObject **cat_lists;
    PyObject *prev_model, *prev_version;
} pred_ctx_t;

static int
read_prediction_root(yyjson_val *root, Py_ssize_t row, void *ctx)
{
    pred_ctx_t *c = ctx;
    return read_record(root, c->spec, row, c->o, c->ids, c->models, c->versions, c->cat_lists,
                       &c->prev_model, &c->prev_version);
}

static int
get_names(PyObject *seq, name_t *out, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyTuple_GET_ITEM(seq, i);
        if (!PyBytes_Check(b)) {
            PyErr_SetString(PyExc_TypeError, "field names must be bytes");
            return 0;
        }
        out[i].ptr = PyBytes_AS_STRING(b);
        out[i].len = PyBytes_GET_SIZE(b);
    }
    return 1;
}

static int
get_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize, Py_ssize_t count,
           const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        return 0;
    }
    if (view->len != itemsize * count) {
        PyErr_Format(PyExc_ValueError, "%s buffer has %zd bytes, need %zd", what,
                     view->len, itemsize * count);
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(decode_predictions_doc,
"decode_predictions(values, keys, features, n_numeric, ts, score, decision, amount, numeric)\n"
"--\n\n"
"Decode plain-JSON prediction events into columns.\n\n"
"values: list of bytes; keys: tuple of 8 bytes (event_id, model, model_version,\n"
"ts, score, decision, amount, features field names); features: tuple of bytes\n"
"(the numeric feature names, then the categorical ones); ts, score, amount:\n"
"writable float64 buffers of len(values); decision: writable int8 buffer\n"
"(-1 = none given); numeric: writable float64 buffer of len(values) x n_numeric.\n\n"
"Returns (event_ids, models, versions, categorical_lists), or the index of the\n"
"first record this fast path leaves to the full decoder.");

static PyObject *
decode_predictions(PyObject *self, PyObject *args)
{
    PyObject *values, *keys, *features, *ts_o, *score_o, *dec_o, *amt_o, *num_o;
    Py_ssize_t n_num;
    if (!PyArg_ParseTuple(args, "O!O!O!nOOOOO", &PyList_Type, &values, &PyTuple_Type, &keys,
                          &PyTuple_Type, &features, &n_num, &ts_o, &score_o, &dec_o, &amt_o,
                          &num_o)) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(values);
    Py_ssize_t n_feat = PyTuple_GET_SIZE(features);
    if (PyTuple_GET_SIZE(keys) != N_KEYS || n_num < 0 || n_num > n_feat) {
        PyErr_SetString(PyExc_ValueError, "need 8 keys and n_numeric <= len(features)");
        return NULL;
    }
    spec_t spec;
    memset(&spec, 0, sizeof spec);
    spec.n_num = n_num;
    spec.n_feat = n_feat;
    PyObject *result = NULL, *ids = NULL, *models = NULL, *versions = NULL;
    PyObject **cat_lists = NULL;
    PyObject *prev_model = NULL, *prev_version = NULL;
    Py_buffer b_ts = {0}, b_score = {0}, b_dec = {0}, b_amt = {0}, b_num = {0};
    Py_ssize_t n_cat = n_feat - n_num;

    if (!get_names(keys, spec.top, N_KEYS)) {
        return NULL;
    }
    spec.feat = PyMem_Calloc((size_t)(n_feat ? n_feat : 1), sizeof(name_t));
    spec.seen = PyMem_Calloc((size_t)(n_feat ? n_feat : 1), 1);
    cat_lists = PyMem_Calloc((size_t)(n_cat ? n_cat : 1), sizeof(PyObject *));
    if (spec.feat == NULL || spec.seen == NULL || cat_lists == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (!get_names(features, spec.feat, n_feat)) {
        goto done;
    }
    if (!get_buffer(ts_o, &b_ts, 8, n, "ts") || !get_buffer(score_o, &b_score, 8, n, "score")
        || !get_buffer(dec_o, &b_dec, 1, n, "decision")
        || !get_buffer(amt_o, &b_amt, 8, n, "amount")
        || !get_buffer(num_o, &b_num, 8, n * n_num, "numeric")) {
        goto done;
    }
    outbufs_t o = {b_ts.buf, b_score.buf, b_amt.buf, b_num.buf, b_dec.buf};
    ids = PyList_New(n);
    models = PyList_New(n);
    versions = PyList_New(n);
    if (ids == NULL || models == NULL || versions == NULL) {
        goto done;
    }
    for (Py_ssize_t c = 0; c < n_cat; c++) {
        if ((cat_lists[c] = PyList_New(n)) == NULL) {
            goto done;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyList_SET_ITEM(cat_lists[c], i, Py_NewRef(Py_None));
        }
    }
    pred_ctx_t ctx = {&spec, &o, ids, models, versions, cat_lists, NULL, NULL};
    Py_ssize_t bail = read_all(values, read_prediction_root, &ctx);
    prev_model = ctx.prev_model;
    prev_version = ctx.prev_version;
    if (bail == READ_ERROR) {
        goto done;
    }
    if (bail >= 0) {
        result = PyLong_FromSsize_t(bail);
        goto done;
    }
    PyObject *cats = PyTuple_New(n_cat);
    if (cats == NULL) {
        goto done;
    }
    for (Py_ssize_t c = 0; c < n_cat; c++) {
        PyTuple_SET_ITEM(cats, c, cat_lists[c]);
        cat_lists[c] = NULL;
    }
    result = PyTuple_Pack(4, ids, models, versions, cats);
    Py_DECREF(cats);

done:
    /* a list that gave up part-way holds NULL slots: fill them before freeing */
    {
        PyObject *lists[3] = {ids, models, versions};
        for (int l = 0; l < 3; l++) {
            if (lists[l] != NULL && (result == NULL || PyLong_Check(result))) {
                for (Py_ssize_t i = 0; i < n; i++) {
                    if (PyList_GET_ITEM(lists[l], i) == NULL) {
                        PyList_SET_ITEM(lists[l], i, Py_NewRef(Py_None));
                    }
                }
            }
        }
    }
    Py_XDECREF(ids);
    Py_XDECREF(models);
    Py_XDECREF(versions);
    Py_XDECREF(prev_model);
    Py_XDECREF(prev_version);
    if (cat_lists != NULL) {
        for (Py_ssize_t c = 0; c < n_cat; c++) {
            Py_XDECREF(cat_lists[c]);
        }
    }
    PyMem_Free(cat_lists);
    PyMem_Free(spec.feat);
    PyMem_Free(spec.seen);
    if (b_ts.obj) PyBuffer_Release(&b_ts);
    if (b_score.obj) PyBuffer_Release(&b_score);
    if (b_dec.obj) PyBuffer_Release(&b_dec);
    if (b_amt.obj) PyBuffer_Release(&b_amt);
    if (b_num.obj) PyBuffer_Release(&b_num);
    return result;
}

/* one label record; 0 to give up */
enum { L_EVENT_ID, L_LABEL, L_TS, L_AMOUNT, N_LABEL_KEYS };

static int
read_label(yyjson_val *root, const name_t *keys, Py_ssize_t row, int64_t *label,
           double *ts, double *amount, PyObject *ids)
{
    if (!yyjson_is_obj(root)) {
        return 0;
    }
    unsigned seen = 0;
    ts[row] = NAN;
    amount[row] = NAN;
    size_t idx, max;
    yyjson_val *k, *v;
    yyjson_obj_foreach(root, idx, max, k, v) {
        int f = field_of(k, v, keys, N_LABEL_KEYS, &seen);
        if (f == FIELD_GIVE_UP) {
            return 0;
        }
        switch (f) {
        case FIELD_UNKNOWN:
            break;
        case L_EVENT_ID:
            if (!set_event_id(v, ids, row)) {
                return 0;
            }
            break;
        case L_LABEL:
            switch (yyjson_get_tag(v)) {
            case YYJSON_TYPE_BOOL | YYJSON_SUBTYPE_TRUE:
                label[row] = 1;
                break;
            case YYJSON_TYPE_BOOL | YYJSON_SUBTYPE_FALSE:
                label[row] = 0;
                break;
            case YYJSON_TYPE_NUM | YYJSON_SUBTYPE_UINT:
                if (yyjson_get_uint(v) > 1) {
                    return 0; /* not a label: msgspec's path names the reason */
                }
                label[row] = (int64_t)yyjson_get_uint(v);
                break;
            default:
                return 0;
            }
            break;
        case L_TS:
            if (!yyjson_is_null(v) && !as_double(v, &ts[row])) {
                return 0; /* RFC 3339 strings go to msgspec */
            }
            break;
        case L_AMOUNT:
            if (!yyjson_is_null(v) && !as_double(v, &amount[row])) {
                return 0;
            }
            break;
        }
    }
    const unsigned required = (1u << L_EVENT_ID) | (1u << L_LABEL);
    return (seen & required) == required;
}

typedef struct {
    const name_t *keys;
    int64_t *label;
    double *ts, *amount;
    PyObject *ids;
} label_ctx_t;

static int
read_label_root(yyjson_val *root, Py_ssize_t row, void *ctx)
{
    label_ctx_t *c = ctx;
    return read_label(root, c->keys, row, c->label, c->ts, c->amount, c->ids);
}

PyDoc_STRVAR(decode_labels_doc,
"decode_labels(values, keys, label, ts, amount)\n"
"--\n\n"
"Decode plain-JSON label events into columns.\n\n"
"values: list of bytes; keys: tuple of 4 bytes (event_id, label, ts, amount\n"
"field names); label: writable int64 buffer of len(values); ts, amount:\n"
"writable float64 buffers (nan = not given).\n\n"
"Returns the list of event ids, or the index of the first record this fast\n"
"path leaves to the full decoder.");

static PyObject *
decode_labels(PyObject *self, PyObject *args)
{
    PyObject *values, *keys, *label_o, *ts_o, *amt_o;
    if (!PyArg_ParseTuple(args, "O!O!OOO", &PyList_Type, &values, &PyTuple_Type, &keys,
                          &label_o, &ts_o, &amt_o)) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(values);
    if (PyTuple_GET_SIZE(keys) != N_LABEL_KEYS) {
        PyErr_SetString(PyExc_ValueError, "need 4 keys");
        return NULL;
    }
    name_t names[N_LABEL_KEYS];
    if (!get_names(keys, names, N_LABEL_KEYS)) {
        return NULL;
    }
    PyObject *result = NULL, *ids = NULL;
    Py_buffer b_label = {0}, b_ts = {0}, b_amt = {0};
    if (!get_buffer(label_o, &b_label, 8, n, "label") || !get_buffer(ts_o, &b_ts, 8, n, "ts")
        || !get_buffer(amt_o, &b_amt, 8, n, "amount")) {
        goto done;
    }
    if ((ids = PyList_New(n)) == NULL) {
        goto done;
    }
    label_ctx_t ctx = {names, b_label.buf, b_ts.buf, b_amt.buf, ids};
    Py_ssize_t bail = read_all(values, read_label_root, &ctx);
    if (bail == READ_ERROR) {
        goto done;
    }
    if (bail >= 0) {
        result = PyLong_FromSsize_t(bail);
        goto done;
    }
    result = Py_NewRef(ids);

done:
    if (ids != NULL && (result == NULL || PyLong_Check(result))) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (PyList_GET_ITEM(ids, i) == NULL) {
                PyList_SET_ITEM(ids, i, Py_NewRef(Py_None));
            }
        }
    }
    Py_XDECREF(ids);
    if (b_label.obj) PyBuffer_Release(&b_label);
    if (b_ts.obj) PyBuffer_Release(&b_ts);
    if (b_amt.obj) PyBuffer_Release(&b_amt);
    return result;
}

static PyMethodDef methods[] = {
    {"decode_predictions", decode_predictions, METH_VARARGS, decode_predictions_doc},
    {"decode_labels", decode_labels, METH_VARARGS, decode_labels_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "monitor.ingest._fastdecode",
    .m_doc = "A yyjson-based fast path that decodes prediction and label events into columns.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__fastdecode(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "YYJSON_VERSION", YYJSON_VERSION_STRING) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
