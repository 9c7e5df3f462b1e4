/* A small C layer over libjpeg(-turbo) for host/src/data/jpeg.rs: scaled (DCT-domain) and
 * partial decoding of one in-memory JPEG, with libjpeg's fatal errors turned into return codes.
 *
 * libjpeg reports a fatal error by calling err->error_exit, which by default prints and calls
 * exit(). Here error_exit longjmps back to the entry function that called into libjpeg (the
 * documented setjmp pattern of libjpeg's example.c), which returns -1 with the message in
 * ej_dec.msg; no Rust frame ever lies between the setjmp and the longjmp. A premature end of
 * data (a truncated file; libjpeg only warns and pads with gray) is made an error the same way;
 * other warnings (extraneous bytes, ...) are ignored as PIL ignores them.
 *
 * Use: ej_new, ej_header, ej_start, ej_read, ej_free. Every function but ej_new/ej_free returns 0
 * on success and -1 on error (message: ej_message). */

#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
} ej_error;

typedef struct {
    struct jpeg_decompress_struct cinfo;
    ej_error err;
    char msg[JMSG_LENGTH_MAX];
    /* CMYK/YCCK files are decoded to CMYK and converted to RGB here, one row at a time. */
    int cmyk;
    JSAMPLE *row;
    /* Columns of an output row once cropped. */
    JDIMENSION width;
} ej_dec;

static void ej_error_exit(j_common_ptr cinfo) {
    ej_error *err = (ej_error *)cinfo->err;
    ej_dec *dec = (ej_dec *)((char *)err - offsetof(ej_dec, err));
    (*cinfo->err->format_message)(cinfo, dec->msg);
    longjmp(err->jump, 1);
}

static void ej_emit_message(j_common_ptr cinfo, int level) {
    if (level == -1 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        /* Truncated data: libjpeg would go on with gray padding. */
        ej_error_exit(cinfo);
    }
    if (level == -1) {
        cinfo->err->num_warnings++;
    }
}

static void ej_output_message(j_common_ptr cinfo) { (void)cinfo; }

ej_dec *ej_new(void) {
    ej_dec *volatile dec = (ej_dec *)calloc(1, sizeof(ej_dec));
    if (!dec) {
        return NULL;
    }
    dec->cinfo.err = jpeg_std_error(&dec->err.pub);
    dec->err.pub.error_exit = ej_error_exit;
    dec->err.pub.emit_message = ej_emit_message;
    dec->err.pub.output_message = ej_output_message;
    if (setjmp(dec->err.jump)) {
        jpeg_destroy_decompress(&dec->cinfo);
        free(dec);
        return NULL;
    }
    jpeg_create_decompress(&dec->cinfo);
    return dec;
}

void ej_free(ej_dec *dec) {
    if (!dec) {
        return;
    }
    jpeg_destroy_decompress(&dec->cinfo);
    free(dec->row);
    free(dec);
}

const char *ej_message(const ej_dec *dec) { return dec->msg; }

/* Reads the header of `data`: full-size width, height and the number of components. */
int ej_header(ej_dec *dec, const unsigned char *data, size_t len, unsigned *width, unsigned *height,
              int *components) {
    if (setjmp(dec->err.jump)) {
        jpeg_abort_decompress(&dec->cinfo);
        return -1;
    }
    if (len == 0) {
        snprintf(dec->msg, sizeof dec->msg, "empty file");
        return -1;
    }
    jpeg_mem_src(&dec->cinfo, data, (unsigned long)len);
    jpeg_read_header(&dec->cinfo, TRUE);
    *width = dec->cinfo.image_width;
    *height = dec->cinfo.image_height;
    *components = dec->cinfo.num_components;
    return 0;
}

/* Starts decompression at scale_num/8 (1..8) with RGB output, limited to the output columns
 * x0..x0+w (scaled coordinates; libjpeg widens them to whole iMCUs). Returns the output size of
 * the scaled image and the columns actually decoded. */
int ej_start(ej_dec *dec, int scale_num, unsigned x0, unsigned w, unsigned *out_width, unsigned *out_height,
             unsigned *crop_x0, unsigned *crop_w) {
    if (setjmp(dec->err.jump)) {
        jpeg_abort_decompress(&dec->cinfo);
        return -1;
    }
    struct jpeg_decompress_struct *c = &dec->cinfo;
    c->scale_num = (unsigned)scale_num;
    c->scale_denom = 8;
    c->dct_method = JDCT_ISLOW;
    dec->cmyk = c->jpeg_color_space == JCS_CMYK || c->jpeg_color_space == JCS_YCCK;
    c->out_color_space = dec->cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(c);
    *out_width = c->output_width;
    *out_height = c->output_height;
    JDIMENSION cx = x0, cw = w;
    if (cx >= c->output_width || cw == 0) {
        snprintf(dec->msg, sizeof dec->msg, "crop columns %u+%u outside the %u-wide scaled image", x0, w,
                 c->output_width);
        jpeg_abort_decompress(c);
        return -1;
    }
    if (cw > c->output_width - cx) {
        cw = c->output_width - cx;
    }
    if (cx > 0 || cw < c->output_width) {
        jpeg_crop_scanline(c, &cx, &cw);
    }
    *crop_x0 = cx;
    *crop_w = c->output_width;
    dec->width = c->output_width;
    if (dec->cmyk) {
        free(dec->row);
        dec->row = (JSAMPLE *)malloc((size_t)c->output_width * 4);
        if (!dec->row) {
            snprintf(dec->msg, sizeof dec->msg, "out of memory");
            jpeg_abort_decompress(c);
            return -1;
        }
    }
    return 0;
}

/* CMYK (Adobe files store it inverted: 255 = no ink) to RGB, as PIL's CMYK -> RGB conversion. */
static void cmyk_to_rgb(const JSAMPLE *in, unsigned char *out, JDIMENSION width, int inverted) {
    for (JDIMENSION i = 0; i < width; i++) {
        unsigned c = in[4 * i], m = in[4 * i + 1], y = in[4 * i + 2], k = in[4 * i + 3];
        if (!inverted) {
            c = 255 - c, m = 255 - m, y = 255 - y, k = 255 - k;
        }
        out[3 * i] = (unsigned char)((c * k + 127) / 255);
        out[3 * i + 1] = (unsigned char)((m * k + 127) / 255);
        out[3 * i + 2] = (unsigned char)((y * k + 127) / 255);
    }
}

/* Skips the output rows above y0, reads rows y0..y0+h into `out` (RGB8, crop_w * 3 bytes per
 * row, `cap` bytes) and ends the decompression without reading the rest. */
int ej_read(ej_dec *dec, unsigned y0, unsigned h, unsigned char *out, size_t cap) {
    if (setjmp(dec->err.jump)) {
        jpeg_abort_decompress(&dec->cinfo);
        return -1;
    }
    struct jpeg_decompress_struct *c = &dec->cinfo;
    size_t stride = (size_t)dec->width * 3;
    if (y0 >= c->output_height || h == 0 || h > c->output_height - y0 || cap < stride * h) {
        snprintf(dec->msg, sizeof dec->msg, "rows %u+%u outside the %u-high scaled image (or buffer too small)", y0,
                 h, c->output_height);
        jpeg_abort_decompress(c);
        return -1;
    }
    JDIMENSION skip = y0;
    while (skip > 0) {
        JDIMENSION n = jpeg_skip_scanlines(c, skip);
        if (n == 0) {
            snprintf(dec->msg, sizeof dec->msg, "cannot skip rows");
            jpeg_abort_decompress(c);
            return -1;
        }
        skip -= n;
    }
    int inverted = c->saw_Adobe_marker;
    for (unsigned r = 0; r < h;) {
        /* Up to 16 rows a call (an iMCU row of 4:2:0 data), straight into `out` unless CMYK. */
        JSAMPROW rows[16];
        JDIMENSION want = dec->cmyk ? 1 : (h - r < 16 ? h - r : 16);
        for (JDIMENSION i = 0; i < want; i++) {
            rows[i] = dec->cmyk ? dec->row : out + stride * (r + i);
        }
        JDIMENSION n = jpeg_read_scanlines(c, rows, want);
        if (n == 0) {
            snprintf(dec->msg, sizeof dec->msg, "no more rows at row %u", y0 + r);
            jpeg_abort_decompress(c);
            return -1;
        }
        if (dec->cmyk) {
            cmyk_to_rgb(dec->row, out + stride * r, dec->width, inverted);
        }
        r += n;
    }
    jpeg_abort_decompress(c);
    return 0;
}
