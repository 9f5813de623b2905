"""cffi out-of-line build of ``skiff.plugins.logging._localc``: the ``local`` log
format's hot loops in C, both ways.

Python spends microseconds an entry framing a line or decoding a protobuf:
seconds for a million lines, minutes for the 250 million two-byte lines of
``yes``.  In C both walks are bound by memory.  The C side knows nothing of
files, rotation or ``--tail``:

- ``skiff_local_frame`` frames a run of whole lines of one stream and time
  (what the output pump hands the driver at once) as entries, up to a byte
  budget (the room left before rotation); ``local.LocalDriver.write_lines``
  drives it.  The bytes are ``localfmt.frame``'s, entry for entry.
- ``skiff_local_render`` takes a buffer of whole and partial entries and
  writes what ``docker logs`` sends for the whole ones (``localrender``
  drives it).  Every check of the Python decoder (``localfmt.decode``) is
  made here too, so a file is either rendered identically or reported
  corrupt at the same entry.
"""

from cffi import FFI

CDEF = """
struct skiff_lr {
    int64_t lo_ns;
    int64_t hi_ns;
    int32_t flags;
    const uint8_t *details;
    int32_t details_len;
    int64_t max_entry;
    int64_t consumed;
    int64_t written;
    int64_t last_ns;
    int64_t last_count;
    int32_t status;
    ...;
};
int skiff_local_render(struct skiff_lr *st, const uint8_t *in, int64_t len,
                       uint8_t *out, int64_t cap);
int64_t skiff_local_frame(const uint8_t *head, int64_t head_len, const uint8_t *in,
                          int64_t len, uint8_t *out, int64_t cap, int64_t budget,
                          int64_t *consumed);
"""

SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <time.h>

/* Set by the caller: the bounds, what to render, the largest entry to accept. */
struct skiff_lr {
    int64_t lo_ns;        /* messages before this are skipped (inclusive bound) */
    int64_t hi_ns;        /* a message after this ends the read */
    int32_t flags;
    const uint8_t *details;  /* --details: the attrs text, then a space */
    int32_t details_len;
    int64_t max_entry;
    /* results of the last call */
    int64_t consumed;     /* bytes of whole entries taken from the input */
    int64_t written;      /* bytes put in the output */
    int64_t last_ns;      /* time of the last message written */
    int64_t last_count;   /* messages at the end of the output in its microsecond */
    int32_t status;
    /* private: the frame being coalesced, and the last second formatted */
    int64_t open_frame;
    int32_t open_kind;
    int64_t last_us;
    int64_t cached_sec;
    char cached_text[24];
};

enum { F_STDOUT = 1, F_STDERR = 2, F_TIMESTAMPS = 4, F_FRAMED = 8, F_COALESCE = 16,
       F_DETAILS = 32 };
/* S_ENTRY: the entry at ``consumed`` is left to the Python decoder, which
   names what is wrong with it (or renders it: a time gmtime cannot show). */
enum { S_MORE = 0, S_FULL = 1, S_UNTIL = 2, S_ENTRY = 3 };

static int varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t r = 0;
    for (int shift = 0; shift <= 63 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (b < 0x80) { *v = r; return 0; }
    }
    return -1;
}

/* PartialLogEntryMetadata {1 last, 2 id, 3 ordinal}: only ``last`` matters here. */
static int metadata(const uint8_t *p, const uint8_t *end, int *last)
{
    while (p < end) {
        uint64_t key, v;
        if (varint(&p, end, &key)) return -1;
        unsigned field = (unsigned)(key >> 3), wire = (unsigned)(key & 7);
        if (wire == 0) {
            if (varint(&p, end, &v)) return -1;
            if (field == 1) *last = v != 0;
        } else if (wire == 2) {
            if (varint(&p, end, &v) || v > (uint64_t)(end - p)) return -1;
            p += v;
        } else if (wire == 1 || wire == 5) {
            uint64_t skip = wire == 1 ? 8 : 4;
            if (skip > (uint64_t)(end - p)) return -1;
            p += skip;
        } else {
            return -1;
        }
    }
    return 0;
}

/* The RFC 3339 time as skiff shows it: microseconds, then "000Z". */
static int64_t stamp(struct skiff_lr *st, int64_t ns, uint8_t *o)
{
    int64_t sec = ns / 1000000000, rem = ns % 1000000000;
    if (rem < 0) { rem += 1000000000; sec -= 1; }
    int64_t us = (rem + 500) / 1000;
    if (us >= 1000000) { us -= 1000000; sec += 1; }
    if (sec != st->cached_sec || st->cached_text[0] == 0) {
        time_t t = (time_t)sec;
        struct tm tm;
        if (!gmtime_r(&t, &tm)) return -1;
        if (strftime(st->cached_text, sizeof st->cached_text, "%Y-%m-%dT%H:%M:%S", &tm) != 19)
            return -1;
        st->cached_sec = sec;
    }
    memcpy(o, st->cached_text, 19);
    o[19] = '.';
    for (int i = 25; i >= 20; i--) { o[i] = (uint8_t)('0' + us % 10); us /= 10; }
    memcpy(o + 26, "000Z ", 5);
    return 31;
}

static void put32(uint8_t *o, uint32_t n)
{
    o[0] = (uint8_t)(n >> 24); o[1] = (uint8_t)(n >> 16);
    o[2] = (uint8_t)(n >> 8); o[3] = (uint8_t)n;
}

static void close_frame(struct skiff_lr *st, uint8_t *out, int64_t w)
{
    if (st->open_frame >= 0) {
        put32(out + st->open_frame + 4, (uint32_t)(w - st->open_frame - 8));
        st->open_frame = -1;
    }
}

int skiff_local_render(struct skiff_lr *st, const uint8_t *in, int64_t len,
                       uint8_t *out, int64_t cap)
{
    int64_t pos = 0, w = 0;
    int framed = st->flags & F_FRAMED, coalesce = framed && (st->flags & F_COALESCE);
    st->open_frame = -1;
    st->status = S_MORE;
    st->last_count = 0;
    while (len - pos >= 4) {
        uint32_t size = ((uint32_t)in[pos] << 24) | ((uint32_t)in[pos + 1] << 16)
                      | ((uint32_t)in[pos + 2] << 8) | in[pos + 3];
        if ((int64_t)size > st->max_entry) { st->status = S_ENTRY; break; }
        if (len - pos < (int64_t)size + 8) break;  /* the rest comes with the next block */
        const uint8_t *e = in + pos + 4, *end = e + size;
        uint32_t after = ((uint32_t)end[0] << 24) | ((uint32_t)end[1] << 16)
                       | ((uint32_t)end[2] << 8) | end[3];
        if (after != size) { st->status = S_ENTRY; break; }
        int kind = 1, partial = 0, last = 0, bad = 0;
        int64_t ns = 0;
        const uint8_t *line = e;
        uint64_t n_line = 0;
        while (e < end && !bad) {
            uint64_t key, v;
            if (varint(&e, end, &key)) { bad = S_ENTRY; break; }
            unsigned field = (unsigned)(key >> 3), wire = (unsigned)(key & 7);
            if (wire == 0) {
                if (varint(&e, end, &v)) { bad = S_ENTRY; break; }
                if (field == 2) ns = (int64_t)v;
                else if (field == 4) partial = v != 0;
            } else if (wire == 2) {
                if (varint(&e, end, &v) || v > (uint64_t)(end - e)) { bad = S_ENTRY; break; }
                if (field == 1) {
                    if (v == 6 && memcmp(e, "stdout", 6) == 0) kind = 1;
                    else if (v == 6 && memcmp(e, "stderr", 6) == 0) kind = 2;
                    else bad = S_ENTRY;
                } else if (field == 3) {
                    line = e;
                    n_line = v;
                } else if (field == 5) {
                    if (metadata(e, e + v, &last)) bad = S_ENTRY;
                }
                e += v;
            } else if (wire == 1 || wire == 5) {
                uint64_t skip = wire == 1 ? 8 : 4;
                if (skip > (uint64_t)(end - e)) { bad = S_ENTRY; break; }
                e += skip;
            } else {
                bad = S_ENTRY;
            }
        }
        if (bad) { st->status = bad; break; }
        if (ns > st->hi_ns) { st->status = S_UNTIL; break; }
        int64_t next = pos + 8 + size;
        if (ns < st->lo_ns || !(st->flags & kind)) { pos = next; continue; }
        int64_t need = (int64_t)n_line + 1 + 31 + st->details_len + 1 + 8;
        if (cap - w < need) { st->status = S_FULL; break; }  /* none written: ``out`` grows */
        int64_t head = -1;
        if (framed) {
            if (!coalesce || st->open_frame < 0 || st->open_kind != kind) {
                close_frame(st, out, w);
                head = w;
                out[w] = (uint8_t)kind; out[w + 1] = out[w + 2] = out[w + 3] = 0;
                w += 8;
                if (coalesce) { st->open_frame = head; st->open_kind = kind; }
            }
        }
        int64_t body = w;
        if (st->flags & F_TIMESTAMPS) {
            int64_t k = stamp(st, ns, out + w);
            if (k < 0) {
                st->status = S_ENTRY;
                if (head >= 0) { w = head; if (st->open_frame == head) st->open_frame = -1; }
                else w = body;
                break;
            }
            w += k;
        }
        if (st->flags & F_DETAILS) {
            memcpy(out + w, st->details, (size_t)st->details_len);
            w += st->details_len;
            out[w++] = ' ';
        }
        memcpy(out + w, line, (size_t)n_line);
        w += (int64_t)n_line;
        if (!partial || last) out[w++] = '\n';  /* a cut line ends after its last piece */
        if (framed && !coalesce) put32(out + head + 4, (uint32_t)(w - body));
        /* counted by the microsecond, the daemon's cursor's unit (logread.micros) */
        int64_t us = ns / 1000 + (ns % 1000 >= 500);
        if (st->last_count && us == st->last_us) st->last_count++;
        else { st->last_us = us; st->last_count = 1; }
        st->last_ns = ns;
        pos = next;
    }
    if (coalesce) close_frame(st, out, w);
    st->consumed = pos;
    st->written = w;
    return st->status;
}
"""

FRAME_SOURCE = r"""
/* Entries for the newline-ended lines of in[0:len], each
   [size][head][0x1a varint(n) line-without-newline][size] (no line field for
   an empty line), as localfmt.frame writes them.  Stops before an entry that
   would not fit ``out``, and after the entry that makes the output reach
   ``budget`` (budget < 0: no limit), as a writer that rotates once the file
   reached its size.  Returns the bytes written; *consumed: input bytes taken
   (whole lines only; a last line without its newline is left). */
int64_t skiff_local_frame(const uint8_t *head, int64_t head_len, const uint8_t *in,
                          int64_t len, uint8_t *out, int64_t cap, int64_t budget,
                          int64_t *consumed)
{
    int64_t pos = 0, w = 0;
    while (pos < len) {
        const uint8_t *nl = memchr(in + pos, '\n', (size_t)(len - pos));
        if (!nl) break;
        int64_t n = nl - (in + pos);
        uint8_t var[10];
        int nv = 0;
        if (n) {
            uint64_t v = (uint64_t)n;
            while (v > 0x7f) { var[nv++] = (uint8_t)((v & 0x7f) | 0x80); v >>= 7; }
            var[nv++] = (uint8_t)v;
        }
        int64_t payload = head_len + (n ? 1 + nv + n : 0);
        if (cap - w < payload + 8) break;
        put32(out + w, (uint32_t)payload);
        w += 4;
        memcpy(out + w, head, (size_t)head_len);
        w += head_len;
        if (n) {
            out[w++] = 0x1a;
            memcpy(out + w, var, (size_t)nv);
            w += nv;
            memcpy(out + w, in + pos, (size_t)n);
            w += n;
        }
        put32(out + w, (uint32_t)payload);
        w += 4;
        pos += n + 1;
        if (budget >= 0 && w >= budget) break;
    }
    *consumed = pos;
    return w;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("skiff.plugins.logging._localc", SOURCE + FRAME_SOURCE,
                      extra_compile_args=["-O2"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
