/* Frame-to-frame SSIM, squared and absolute differences, for consecutive frames of one video.
 *
 * Compiled on first use by t2v_exp/metrics/ssim_native.py (plain C, no Python or torch headers)
 * and called through ctypes, which releases the GIL, so Python threads run calls in parallel.
 *
 * frames: double [count][channels][height][width], levels 0..255 (L = 255), or (the _u8 entry)
 *         uint8 [count][height][width][channels] as decoded.
 * kernel: the 1-D Gaussian, `taps` weights (odd); the SSIM map covers the outputs whose whole
 *         window lies inside the frame, (height - taps + 1) x (width - taps + 1).
 * out:    double [3][count - 1]: per pair (t, t + 1), the SSIM map summed over the valid
 *         pixels and the channels; the sum of squared and the sum of absolute differences.
 * Returns 0, or -1 when scratch memory could not be allocated.
 *
 * Everything is float64 (as scikit-image computes), so no centring or cancellation tricks are
 * needed: the moments of 0..255 levels lose at most ~1e-11 to E[x^2] - E[x]^2.
 * The filter is separable: per output row a vertical pass over 11 input rows, then a horizontal
 * pass. Work goes in bands of output rows small enough for the core's L2 cache (the frames'
 * input rows and filtered maps of one band). Each frame's own filtered maps (x and x^2) are
 * computed once and serve both pairs it belongs to; per pair only x*y is filtered, fused with
 * the SSIM formula. Sums are kept in registers over blocks of 8 outputs,
 * along rows (contiguous), so the compiler vectorises them.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 8  /* outputs per register block */
#define SPAN(width) ((size_t)(width) + BLOCK)          /* a scratch row and the padding blocks read */
#define MAP_SIZE(out_plane) ((size_t)(out_plane) + BLOCK)  /* a filtered map and the last row's spill */

/* Eight running sums, so the additions pipeline (a single accumulator waits on each add). */
static double total(const double *values, int n) {
    double part[8] = {0};
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; ++k) part[k] += values[j + k];
    double sum = 0.0;
    for (; j < n; ++j) sum += values[j];
    for (int k = 0; k < 8; ++k) sum += part[k];
    return sum;
}

/* Blocks of 8 outputs as two 4-double vectors (GCC/clang vector extensions: AVX where the CPU
 * has it, SSE2 pairs otherwise), so the sums stay in registers across the taps; the last
 * outputs of a row that do not fill a block go through the scalar versions. */
typedef double v4 __attribute__((vector_size(32)));

static inline v4 load(const double *p) {
    v4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void put(double *p, v4 v) { memcpy(p, &v, sizeof v); }

static inline void vertical_frame(const double *restrict x, int width, const double *restrict kernel, int taps,
                                  int j, double *restrict mean, double *restrict square) {
    v4 s0 = {0}, s1 = {0}, q0 = {0}, q1 = {0};
    for (int k = 0; k < taps; ++k) {
        const double *row = x + (size_t)k * width + j;
        const v4 a0 = load(row), a1 = load(row + 4);
        const v4 w0 = kernel[k] * a0, w1 = kernel[k] * a1;
        s0 += w0, s1 += w1, q0 += w0 * a0, q1 += w1 * a1;
    }
    put(mean + j, s0), put(mean + j + 4, s1), put(square + j, q0), put(square + j + 4, q1);
}

static void vertical_frame_scalar(const double *x, int width, const double *kernel, int taps, int j,
                                  double *mean, double *square) {
    double s = 0.0, q = 0.0;
    for (int k = 0; k < taps; ++k) {
        const double a = x[(size_t)k * width + j], w = kernel[k] * a;
        s += w, q += w * a;
    }
    mean[j] = s, square[j] = q;
}

static inline void vertical_cross(const double *restrict x, const double *restrict y, int width,
                                  const double *restrict kernel, int taps, int j, double *restrict cross) {
    v4 s0 = {0}, s1 = {0};
    for (int k = 0; k < taps; ++k) {
        const size_t r = (size_t)k * width + j;
        s0 += kernel[k] * (load(x + r) * load(y + r));
        s1 += kernel[k] * (load(x + r + 4) * load(y + r + 4));
    }
    put(cross + j, s0), put(cross + j + 4, s1);
}

static void vertical_cross_scalar(const double *x, const double *y, int width, const double *kernel, int taps,
                                  int j, double *cross) {
    double s = 0.0;
    for (int k = 0; k < taps; ++k) s += kernel[k] * (x[(size_t)k * width + j] * y[(size_t)k * width + j]);
    cross[j] = s;
}

/* Whole blocks only: `row` must be readable (and finite) up to BLOCK - 1 values past the row's
 * width and `out` writable up to BLOCK - 1 past out_w; the extra outputs are never read. */
static void horizontal_row(const double *restrict row, int out_w, const double *restrict kernel, int taps,
                           double *restrict out) {
    for (int j = 0; j < out_w; j += BLOCK) {
        v4 s0 = {0}, s1 = {0};
        for (int k = 0; k < taps; ++k) {
            s0 += kernel[k] * load(row + j + k);
            s1 += kernel[k] * load(row + j + k + 4);
        }
        put(out + j, s0), put(out + j + 4, s1);
    }
}

/* The filtered x and x^2 of one channel plane: mean, square [out_h][out_w]. */
static void filter_plane(const double *x, int height, int width, const double *kernel, int taps, double *mean,
                         double *square, double *columns) {
    const int out_h = height - taps + 1, out_w = width - taps + 1;
    for (int i = 0; i < out_h; ++i) {
        const double *rows = x + (size_t)i * width;
        int j = 0;
        double *squares = columns + SPAN(width);
        for (; j + BLOCK <= width; j += BLOCK) vertical_frame(rows, width, kernel, taps, j, columns, squares);
        for (; j < width; ++j) vertical_frame_scalar(rows, width, kernel, taps, j, columns, squares);
        horizontal_row(columns, out_w, kernel, taps, mean + (size_t)i * out_w);
        horizontal_row(squares, out_w, kernel, taps, square + (size_t)i * out_w);
    }
}

/* The SSIM map of one channel of a pair, summed over its valid pixels, from the frames' filtered
 * maps and the filtered x*y computed here row by row. */
static double ssim_plane(const double *x, const double *y, const double *mean_x, const double *square_x,
                         const double *mean_y, const double *square_y, int height, int width,
                         const double *kernel, int taps, double c1, double c2, double *columns, double *map) {
    const int out_h = height - taps + 1, out_w = width - taps + 1;
    double *cross = columns + SPAN(width);
    double sum = 0.0;
    for (int i = 0; i < out_h; ++i) {
        const double *xr = x + (size_t)i * width, *yr = y + (size_t)i * width;
        int j = 0;
        for (; j + BLOCK <= width; j += BLOCK) vertical_cross(xr, yr, width, kernel, taps, j, columns);
        for (; j < width; ++j) vertical_cross_scalar(xr, yr, width, kernel, taps, j, columns);
        horizontal_row(columns, out_w, kernel, taps, cross);
        const size_t r = (size_t)i * out_w;
        for (j = 0; j < out_w; ++j) {
            const double mx = mean_x[r + j], my = mean_y[r + j];
            const double vx = square_x[r + j] - mx * mx, vy = square_y[r + j] - my * my;
            const double cov = cross[j] - mx * my;
            map[j] = ((2.0 * mx * my + c1) * (2.0 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2));
        }
        sum += total(map, out_w);
    }
    return sum;
}

/* Output rows per band: the band's input rows of two frames (double) and the two frames'
 * filtered maps stay within about 512 KB, inside a core's L2 cache at any frame width. */
static int band_rows(int width, int out_h, int taps) {
    int rows = (65536 / width - 2 * (taps - 1)) / 6;
    if (rows < 1) rows = 1;
    return rows < out_h ? rows : out_h;
}

/* The frames of one run, as double input rows: either pointers into caller's float64 planes or
 * rows converted from interleaved uint8 into a buffer per frame slot. */
typedef struct {
    const double *planes;        /* [count][channels][height][width], or NULL */
    const unsigned char *pixels; /* [count][height][width][channels], or NULL */
    int channels, height, width;
    double *converted[2];        /* per slot: rows_in x width */
} Frames;

static const double *band_input(Frames *frames, int t, int c, int top, int rows) {
    const int width = frames->width, channels = frames->channels;
    if (frames->planes)
        return frames->planes + (((size_t)t * channels + c) * frames->height + top) * width;
    double *target = frames->converted[t % 2];
    const unsigned char *source = frames->pixels + (((size_t)t * frames->height + top) * width) * channels + c;
    for (size_t p = 0; p < (size_t)rows * width; ++p) target[p] = source[p * channels];
    return target;
}

/* Row bands of the output, then channels, then frames in order: frame t's band is filtered once
 * and scored against frame t - 1's, whose band maps are still in the other slot. */
static int run(Frames *frames, int count, const double *kernel, int taps, double c1, double c2, double *out) {
    const int height = frames->height, width = frames->width, pairs = count - 1;
    const int out_h = height - taps + 1, out_w = width - taps + 1, band = band_rows(width, out_h, taps);
    const size_t map_size = MAP_SIZE((size_t)band * out_w), rows_max = (size_t)(band + taps - 1) * width;
    /* calloc: the padding past each row and map is read by whole blocks, so it must be finite. */
    double *maps = calloc(4 * map_size, sizeof(double));  /* [slot][mean, square] */
    double *rows = calloc(4 * SPAN(width), sizeof(double));
    double *converted = frames->pixels ? malloc(sizeof(double) * 2 * rows_max) : NULL;
    if (!maps || !rows || (frames->pixels && !converted)) {
        free(maps); free(rows); free(converted);
        return -1;
    }
    frames->converted[0] = converted, frames->converted[1] = converted ? converted + rows_max : NULL;
    for (int k = 0; k < 3 * pairs; ++k) out[k] = 0.0;
    double *columns = rows, *map = rows + 3 * SPAN(width), *difference = rows;
    for (int top = 0; top < out_h; top += band) {
        const int outputs = out_h - top < band ? out_h - top : band, rows_in = outputs + taps - 1;
        /* Input rows this band counts for PSNR and motion: its first `outputs`, and the rest at the end. */
        const int owned = top + outputs == out_h ? rows_in : outputs;
        for (int c = 0; c < frames->channels; ++c) {
            const double *previous = NULL;
            for (int t = 0; t < count; ++t) {
                const double *current = band_input(frames, t, c, top, rows_in);
                double *mean = maps + 2 * map_size * (t % 2), *square = mean + map_size;
                filter_plane(current, rows_in, width, kernel, taps, mean, square, columns);
                if (previous) {
                    const double *mean_x = maps + 2 * map_size * ((t - 1) % 2), *square_x = mean_x + map_size;
                    out[t - 1] += ssim_plane(previous, current, mean_x, square_x, mean, square, rows_in, width,
                                             kernel, taps, c1, c2, columns, map);
                    for (int i = 0; i < owned; ++i) {
                        const double *xr = previous + (size_t)i * width, *yr = current + (size_t)i * width;
                        for (int j = 0; j < width; ++j) difference[j] = (xr[j] - yr[j]) * (xr[j] - yr[j]);
                        out[pairs + t - 1] += total(difference, width);
                        for (int j = 0; j < width; ++j) difference[j] = fabs(xr[j] - yr[j]);
                        out[2 * pairs + t - 1] += total(difference, width);
                    }
                }
                previous = current;
            }
        }
    }
    free(maps); free(rows); free(converted);
    return 0;
}

/* frames: double [count][channels][height][width] in levels. */
int ssim_pair_sums(const double *frames, int count, int channels, int height, int width,
                   const double *kernel, int taps, double c1, double c2, double *out) {
    Frames source = {frames, NULL, channels, height, width, {NULL, NULL}};
    return run(&source, count, kernel, taps, c1, c2, out);
}

/* frames: uint8 [count][height][width][channels], as decoders hand them over; each band's rows
 * are converted as they are needed, so no float copy of a frame is ever made. */
int ssim_pair_sums_u8(const unsigned char *frames, int count, int channels, int height, int width,
                      const double *kernel, int taps, double c1, double c2, double *out) {
    Frames source = {NULL, frames, channels, height, width, {NULL, NULL}};
    return run(&source, count, kernel, taps, c1, c2, out);
}
