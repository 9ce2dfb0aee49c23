"""The C sources of a model's shared library, as ``string.Template``s filled in by ``clib.py``.

``HEADER`` is the public header (``{name}.h``): the API shared by every lepton
model (status codes, dtype codes, ``lepton_tensor_info``) inside a guard, so
that several models' headers can be included in one file, then the functions
of this model, all prefixed ``{name}_``.

``WRAPPER`` implements that API around the LLVM object code's entry point
``{name}_main`` (see ``backends/llvm/module.py``); it is compiled with
``-fvisibility=hidden``, so that only the API is exported, and every helper in
it is ``static``.
"""

from __future__ import annotations

from string import Template

STATUS = (
    ("OK", 0, "success"),
    ("ERR_NULL_POINTER", 1, "a required pointer argument is NULL"),
    ("ERR_BATCH_RANGE", 2, "batch size below 1 or above the context's max batch"),
    ("ERR_BATCH_RULE", 3, "batch size the compiled kernels do not allow for this model"),
    ("ERR_INDEX", 4, "input or output index out of range"),
    ("ERR_INVALID_ARGUMENT", 5, "invalid argument"),
    ("ERR_OUT_OF_MEMORY", 6, "out of memory"),
    ("ERR_WEIGHTS_MISSING", 7, "the weights file cannot be opened"),
    ("ERR_WEIGHTS_CORRUPT", 8, "the weights file is truncated, damaged or of another model"),
    ("ERR_UNSUPPORTED_CPU", 9, "this CPU lacks an instruction set extension the code was compiled for"),
)
"""(name without the LEPTON_ prefix, value, description) of every status code."""

DTYPE_CODES = {"float32": 1, "float64": 2, "float16": 3, "int8": 4, "uint8": 5, "int16": 6,
               "int32": 7, "int64": 8, "bool": 9}
"""numpy dtype name -> LEPTON_DTYPE_* value."""


def _common() -> str:
    status = "\n".join(f"    LEPTON_{name} = {value},{' ' * (24 - len(name))}/* {text} */"
                       for name, value, text in STATUS)
    strings = "\n".join(f"    case LEPTON_{name}: return \"{text}\";" for name, _, text in STATUS)
    dtypes = "\n".join(f"    LEPTON_DTYPE_{name.upper()} = {code}," for name, code in DTYPE_CODES.items())
    return f"""\
#ifndef LEPTON_C_API_V1
#define LEPTON_C_API_V1
/* ---- Shared by every lepton model header (version 1 of the C API) ---------------------------- */

#if defined(__GNUC__) || defined(__clang__)
#define LEPTON_API __attribute__((visibility("default")))
#else
#define LEPTON_API
#endif

/* What every function returns. */
enum lepton_status {{
{status}
}};

/* Element types of inputs and outputs (lepton_tensor_info.dtype). */
enum lepton_dtype {{
{dtypes}
}};

/* An input or output of a model. Every pointer in it points to static data of the library. */
typedef struct lepton_tensor_info {{
    const char *name;              /* the ONNX name (UTF-8) */
    int32_t dtype;                 /* a LEPTON_DTYPE_* value */
    int32_t element_size;          /* bytes per element */
    int64_t rank;                  /* number of dims */
    const int64_t *shape;          /* rank dims; -1 where the dim is symbolic (depends on the batch) */
    const char *const *dim_names;  /* rank entries: a symbolic dim as text ("N", "N*4"), NULL for a fixed one */
}} lepton_tensor_info;

/* A constant English description of a status code. */
static inline const char *lepton_status_string(int status) {{
    switch (status) {{
{strings}
    default: return "unknown status code";
    }}
}}
#endif /* LEPTON_C_API_V1 */
"""


HEADER = Template("""\
/* ${name}.h -- the C API of a model compiled by lepton_compiler ${version}. Generated; do not edit.
 *
 * Model    ${model}
 * Inputs   ${inputs}
 * Outputs  ${outputs}
 * Batch    ${batch}
 *
 * Build the library that implements this header with
 *     lepton compile MODEL.onnx --emit so --name ${name} -o lib${name}.so [--weights external]
 * (write this header with --emit header --name ${name}); link a program with -l${name}. The library
 * depends only on libc, libm and, when built for several threads, libgomp. With --weights external
 * the weights are a .bin file beside the library, read and checked by ${name}_create.
 *
 * Use
 *     ${name}_context *ctx = NULL;
 *     int status = ${name}_create(&ctx, 64);          // workspace for batches of up to 64
 *     if (status != LEPTON_OK) { puts(lepton_status_string(status)); ... }
 *     const void *inputs[${NAME}_NUM_INPUTS] = {x};        // the caller's buffers: packed, row-major
 *     void *outputs[${NAME}_NUM_OUTPUTS] = {y};
 *     status = ${name}_run(ctx, 16, inputs, outputs);   // a batch of 16
 *     ${name}_free(ctx);
 *
 * Every function returns LEPTON_OK (0) or one of the LEPTON_ERR_* codes below; none aborts or prints.
 * Buffers must hold at least the bytes ${name}_input_size / ${name}_output_size give for the batch.
 * A context owns a workspace (and, with external weights, its copy of the weights); one context must
 * not run on two threads at once, but any number of contexts may run at the same time. The functions
 * that take no context are safe to call from any thread.
 */
#ifndef ${NAME}_LEPTON_H_
#define ${NAME}_LEPTON_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

${common}
/* ---- Model '${name}' ------------------------------------------------------------------------ */

#define ${NAME}_NUM_INPUTS ${num_inputs}
#define ${NAME}_NUM_OUTPUTS ${num_outputs}

/* A context: the workspace of up to max_batch images per run, and the thread count. */
typedef struct ${name}_context ${name}_context;

/* Create a context whose workspace holds batches of up to max_batch (>= 1); *ctx is set on success
 * (and to NULL on failure). A library built with --weights external reads the weights from the .bin
 * file written beside it (libX.so -> libX.bin, looked up in the library's directory) and checks its
 * size and checksum; the default threads are set (see ${name}_set_threads).
 * Errors: NULL_POINTER, BATCH_RANGE (max_batch < 1), OUT_OF_MEMORY, WEIGHTS_MISSING,
 * WEIGHTS_CORRUPT, UNSUPPORTED_CPU. */
LEPTON_API int ${name}_create(${name}_context **ctx, int64_t max_batch);

/* Like ${name}_create, with the weights read from weights_path (external weights only; a library
 * with embedded weights answers INVALID_ARGUMENT). */
LEPTON_API int ${name}_create_with_weights(${name}_context **ctx, int64_t max_batch, const char *weights_path);

/* Free a context and everything it owns. Errors: NULL_POINTER. */
LEPTON_API int ${name}_free(${name}_context *ctx);

/* Grow (or shrink) the workspace to hold batches of up to max_batch; on failure the context is
 * unchanged. Errors: NULL_POINTER, BATCH_RANGE, OUT_OF_MEMORY. */
LEPTON_API int ${name}_set_max_batch(${name}_context *ctx, int64_t max_batch);

/* The largest batch the context's workspace holds. Errors: NULL_POINTER. */
LEPTON_API int ${name}_max_batch(const ${name}_context *ctx, int64_t *max_batch);

/* Threads the kernels may use (>= 1). Default: ${default_threads}. A library built without
 * a parallel runtime (--threads 1, or no libgomp) accepts any count and runs on the calling thread.
 * Errors: NULL_POINTER, INVALID_ARGUMENT (threads < 1). */
LEPTON_API int ${name}_set_threads(${name}_context *ctx, int64_t threads);

/* Threads the next run will use (1 when the library has no parallel runtime). Errors: NULL_POINTER. */
LEPTON_API int ${name}_threads(const ${name}_context *ctx, int64_t *threads);

/* Run the model on a batch of batch items: inputs[i] and outputs[i] point to the caller's buffers,
 * ${NAME}_NUM_INPUTS and ${NAME}_NUM_OUTPUTS of them, in the order of ${name}_input_info and
 * ${name}_output_info. Errors: NULL_POINTER (ctx, inputs, outputs or one of their entries),
 * BATCH_RANGE (batch < 1 or > the context's max batch), BATCH_RULE (see ${name}_check_batch). */
LEPTON_API int ${name}_run(${name}_context *ctx, int64_t batch, const void *const *inputs, void *const *outputs);

/* Whether the compiled kernels allow this batch size (regardless of any context's max batch).
 * ${batch_rules}
 * Errors: BATCH_RANGE (batch < 1), BATCH_RULE. */
LEPTON_API int ${name}_check_batch(int64_t batch);

/* Number of inputs and outputs. Errors: NULL_POINTER. */
LEPTON_API int ${name}_num_inputs(int64_t *count);
LEPTON_API int ${name}_num_outputs(int64_t *count);

/* Name, dtype and shape of input or output number index. Errors: NULL_POINTER, INDEX. */
LEPTON_API int ${name}_input_info(int64_t index, lepton_tensor_info *info);
LEPTON_API int ${name}_output_info(int64_t index, lepton_tensor_info *info);

/* Bytes of input or output number index for a batch of batch items.
 * Errors: NULL_POINTER, INDEX, BATCH_RANGE (batch < 1 or so large the size overflows). */
LEPTON_API int ${name}_input_size(int64_t index, int64_t batch, int64_t *bytes);
LEPTON_API int ${name}_output_size(int64_t index, int64_t batch, int64_t *bytes);

#ifdef __cplusplus
}
#endif

#endif /* ${NAME}_LEPTON_H_ */
""")


WRAPPER = Template("""\
/* The C API of model '${name}' around its LLVM object code. Generated by lepton_compiler ${version}
 * (lepton_compiler/export/clib.py); do not edit. */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__linux__)
#include <sched.h>
#endif
#if ${external}
#include <dlfcn.h>
#endif
#include "${header}"

#define HIDDEN __attribute__((visibility("hidden")))

/* The entry point of the object code (lepton_compiler/backends/llvm/module.py). */
extern void ${name}_main(int64_t batch, void **io, void **consts, void *workspace,
                         int64_t threads, void **omp, int64_t *timings) HIDDEN;

#define N_INPUTS ${num_inputs}
#define N_OUTPUTS ${num_outputs}
#define N_CONSTS ${num_consts}
#define WORKSPACE_PER_BATCH INT64_C(${ws_per_batch})
#define WORKSPACE_FIXED INT64_C(${ws_fixed})
#define ALIGN 64
#define BATCHED ${batched}                 /* 1: the model has a dynamic (batch) dim */
#define DEFAULT_THREADS ${default_threads}         /* 0: every core this process may run on */
#define WEIGHTS_SIZE UINT64_C(${weights_size})
#define WEIGHTS_CRC32 UINT32_C(${weights_crc32})

/* Byte offset of every constant in the weights. */
static const uint64_t const_offsets[N_CONSTS + 1] = {${const_offsets}};

/* Inputs, then outputs: bytes per batch item (or in all, for a tensor without the batch dim). */
${tensor_tables}
static const lepton_tensor_info tensors[N_INPUTS + N_OUTPUTS + 1] = {
${tensor_infos}
};
static const int64_t tensor_bytes[N_INPUTS + N_OUTPUTS + 1] = {${tensor_bytes}};
static const unsigned char tensor_batched[N_INPUTS + N_OUTPUTS + 1] = {${tensor_batched}};

/* The batch sizes each kernel allows (broadcasts resolved at run time). */
${rule_tables}
struct batch_rule { const int64_t *allowed; int64_t count; };
static const struct batch_rule batch_rules[${num_rules} + 1] = {${rules}};

/* ---- parallel runtime ---------------------------------------------------------------------- */
#if ${with_omp}
extern void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
extern int omp_get_thread_num(void);
extern int omp_get_num_threads(void);
static void *const omp_table[3] = {(void *)GOMP_parallel, (void *)omp_get_thread_num,
                                   (void *)omp_get_num_threads};
#define OMP_TABLE ((void **)omp_table)
#else
#define OMP_TABLE ((void **)0)
#endif

static int64_t default_threads(void) {
#if ${with_omp}
    if (DEFAULT_THREADS > 0) return DEFAULT_THREADS;
#if defined(__linux__)
    {
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
    }
#endif
    {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (int64_t)n : 1;
    }
#else
    return 1;
#endif
}

/* ---- CPU check ----------------------------------------------------------------------------- */
static int cpu_supported(void) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
${cpu_checks}
#endif
    return 1;
}

/* ---- weights ------------------------------------------------------------------------------- */
#if ${external}
static const char weights_file[] = "${weights_file_c}";
static const unsigned char weights_magic[8] = {'L', 'E', 'P', 'T', 'O', 'N', 'W', 'T'};
#define WEIGHTS_HEADER 64
#define WEIGHTS_VERSION 1

static uint32_t crc32_of(const unsigned char *data, uint64_t size) {
    uint32_t table[256], crc = 0xFFFFFFFFu;
    uint64_t i;
    for (i = 0; i < 256; i++) {
        uint32_t c = (uint32_t)i;
        int k;
        for (k = 0; k < 8; k++) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    for (i = 0; i < size; i++) crc = table[(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

static uint64_t little_endian(const unsigned char *p, int bytes) {
    uint64_t v = 0;
    int i;
    for (i = bytes - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* The weights file beside this library (the directory of the file the dynamic loader opened). */
static const char anchor = 0;
static char *default_weights_path(void) {
    const char *library = NULL, *slash;
    size_t dir = 0;
    char *path;
    Dl_info info;
    if (dladdr((const void *)&anchor, &info) && info.dli_fname) library = info.dli_fname;
    slash = library ? strrchr(library, '/') : NULL;
    if (slash) dir = (size_t)(slash - library) + 1;
    path = (char *)malloc(dir + sizeof weights_file);
    if (!path) return NULL;
    if (dir) memcpy(path, library, dir);
    memcpy(path + dir, weights_file, sizeof weights_file);
    return path;
}

/* Read and check the weights: header (magic, version, size, checksum), exact length, checksum. */
static int load_weights(const char *path, unsigned char **block, const unsigned char **data) {
    unsigned char header[WEIGHTS_HEADER];
    unsigned char *raw, *aligned;
    FILE *f = fopen(path, "rb");
    if (!f) return LEPTON_ERR_WEIGHTS_MISSING;
    if (fread(header, 1, WEIGHTS_HEADER, f) != WEIGHTS_HEADER || memcmp(header, weights_magic, 8) != 0
            || little_endian(header + 8, 4) != WEIGHTS_VERSION || little_endian(header + 12, 4) != WEIGHTS_CRC32
            || little_endian(header + 16, 8) != WEIGHTS_SIZE) {
        fclose(f);
        return LEPTON_ERR_WEIGHTS_CORRUPT;
    }
    if (WEIGHTS_SIZE > (uint64_t)(SIZE_MAX - ALIGN)) {
        fclose(f);
        return LEPTON_ERR_OUT_OF_MEMORY;
    }
    raw = (unsigned char *)malloc((size_t)WEIGHTS_SIZE + ALIGN);
    if (!raw) {
        fclose(f);
        return LEPTON_ERR_OUT_OF_MEMORY;
    }
    aligned = raw + ((ALIGN - ((uintptr_t)raw % ALIGN)) % ALIGN);
    if (fread(aligned, 1, (size_t)WEIGHTS_SIZE, f) != (size_t)WEIGHTS_SIZE || fgetc(f) != EOF
            || crc32_of(aligned, WEIGHTS_SIZE) != WEIGHTS_CRC32) {
        fclose(f);
        free(raw);
        return LEPTON_ERR_WEIGHTS_CORRUPT;
    }
    fclose(f);
    *block = raw;
    *data = aligned;
    return LEPTON_OK;
}
#else
extern const unsigned char ${name}_lepton_weights[] HIDDEN;
#endif

/* ---- contexts ------------------------------------------------------------------------------ */
struct ${name}_context {
    int64_t max_batch;
    int64_t threads;
    unsigned char *workspace_block;   /* malloc'd */
    unsigned char *workspace;         /* aligned to ALIGN within it */
    unsigned char *weights_block;     /* external weights: malloc'd; NULL when embedded */
    void *consts[N_CONSTS + 1];
};

static int allocate_workspace(int64_t max_batch, unsigned char **block, unsigned char **aligned) {
    int64_t items = BATCHED ? max_batch : 1;
    uint64_t bytes;
    if (max_batch < 1) return LEPTON_ERR_BATCH_RANGE;
    if (WORKSPACE_PER_BATCH > 0 && items > (INT64_MAX - WORKSPACE_FIXED - ALIGN) / WORKSPACE_PER_BATCH)
        return LEPTON_ERR_OUT_OF_MEMORY;
    bytes = (uint64_t)(WORKSPACE_PER_BATCH * items + WORKSPACE_FIXED + ALIGN);
    if (bytes > (uint64_t)SIZE_MAX) return LEPTON_ERR_OUT_OF_MEMORY;
    *block = (unsigned char *)malloc((size_t)bytes);
    if (!*block) return LEPTON_ERR_OUT_OF_MEMORY;
    *aligned = *block + ((ALIGN - ((uintptr_t)*block % ALIGN)) % ALIGN);
    return LEPTON_OK;
}

static int create(${name}_context **out, int64_t max_batch, const char *weights_path) {
    ${name}_context *ctx;
    const unsigned char *weights;
    int status, i;
    if (!out) return LEPTON_ERR_NULL_POINTER;
    *out = NULL;
    if (max_batch < 1) return LEPTON_ERR_BATCH_RANGE;
    if (!cpu_supported()) return LEPTON_ERR_UNSUPPORTED_CPU;
    ctx = (${name}_context *)calloc(1, sizeof *ctx);
    if (!ctx) return LEPTON_ERR_OUT_OF_MEMORY;
    status = allocate_workspace(max_batch, &ctx->workspace_block, &ctx->workspace);
    if (status != LEPTON_OK) {
        free(ctx);
        return status;
    }
#if ${external}
    {
        char *path = weights_path ? NULL : default_weights_path();
        if (!weights_path && !path) status = LEPTON_ERR_OUT_OF_MEMORY;
        else status = load_weights(weights_path ? weights_path : path, &ctx->weights_block, &weights);
        free(path);
        if (status != LEPTON_OK) {
            free(ctx->workspace_block);
            free(ctx);
            return status;
        }
    }
#else
    (void)weights_path;
    weights = ${name}_lepton_weights;
#endif
    for (i = 0; i < N_CONSTS; i++) ctx->consts[i] = (void *)(weights + const_offsets[i]);
    ctx->max_batch = max_batch;
    ctx->threads = default_threads();
    *out = ctx;
    return LEPTON_OK;
}

int ${name}_create(${name}_context **ctx, int64_t max_batch) {
    return create(ctx, max_batch, NULL);
}

int ${name}_create_with_weights(${name}_context **ctx, int64_t max_batch, const char *weights_path) {
    if (!ctx) return LEPTON_ERR_NULL_POINTER;
    *ctx = NULL;
    if (!weights_path) return LEPTON_ERR_NULL_POINTER;
    if (!${external}) return LEPTON_ERR_INVALID_ARGUMENT;
    return create(ctx, max_batch, weights_path);
}

int ${name}_free(${name}_context *ctx) {
    if (!ctx) return LEPTON_ERR_NULL_POINTER;
    free(ctx->workspace_block);
    free(ctx->weights_block);
    free(ctx);
    return LEPTON_OK;
}

int ${name}_set_max_batch(${name}_context *ctx, int64_t max_batch) {
    unsigned char *block, *aligned;
    int status;
    if (!ctx) return LEPTON_ERR_NULL_POINTER;
    status = allocate_workspace(max_batch, &block, &aligned);
    if (status != LEPTON_OK) return status;
    free(ctx->workspace_block);
    ctx->workspace_block = block;
    ctx->workspace = aligned;
    ctx->max_batch = max_batch;
    return LEPTON_OK;
}

int ${name}_max_batch(const ${name}_context *ctx, int64_t *max_batch) {
    if (!ctx || !max_batch) return LEPTON_ERR_NULL_POINTER;
    *max_batch = ctx->max_batch;
    return LEPTON_OK;
}

int ${name}_set_threads(${name}_context *ctx, int64_t threads) {
    if (!ctx) return LEPTON_ERR_NULL_POINTER;
    if (threads < 1) return LEPTON_ERR_INVALID_ARGUMENT;
    if (${with_omp}) ctx->threads = threads;
    return LEPTON_OK;
}

int ${name}_threads(const ${name}_context *ctx, int64_t *threads) {
    if (!ctx || !threads) return LEPTON_ERR_NULL_POINTER;
    *threads = ctx->threads;
    return LEPTON_OK;
}

static int check_batch(int64_t batch) {
    int64_t r, i;
    if (batch < 1) return LEPTON_ERR_BATCH_RANGE;
    if (!BATCHED && batch != 1) return LEPTON_ERR_BATCH_RULE;
    for (r = 0; r < ${num_rules}; r++) {
        int allowed = 0;
        for (i = 0; i < batch_rules[r].count; i++) allowed |= batch_rules[r].allowed[i] == batch;
        if (!allowed) return LEPTON_ERR_BATCH_RULE;
    }
    return LEPTON_OK;
}

int ${name}_check_batch(int64_t batch) {
    return check_batch(batch);
}

int ${name}_run(${name}_context *ctx, int64_t batch, const void *const *inputs, void *const *outputs) {
    void *io[N_INPUTS + N_OUTPUTS + 1];
    int status, i;
    if (!ctx || !inputs || !outputs) return LEPTON_ERR_NULL_POINTER;
    for (i = 0; i < N_INPUTS; i++) {
        if (!inputs[i]) return LEPTON_ERR_NULL_POINTER;
        io[i] = (void *)inputs[i];
    }
    for (i = 0; i < N_OUTPUTS; i++) {
        if (!outputs[i]) return LEPTON_ERR_NULL_POINTER;
        io[N_INPUTS + i] = outputs[i];
    }
    if (batch < 1 || batch > ctx->max_batch) return LEPTON_ERR_BATCH_RANGE;
    status = check_batch(batch);
    if (status != LEPTON_OK) return status;
    ${name}_main(batch, io, ctx->consts, ctx->workspace, ctx->threads,
                 ctx->threads > 1 ? OMP_TABLE : (void **)0, (int64_t *)0);
    return LEPTON_OK;
}

int ${name}_num_inputs(int64_t *count) {
    if (!count) return LEPTON_ERR_NULL_POINTER;
    *count = N_INPUTS;
    return LEPTON_OK;
}

int ${name}_num_outputs(int64_t *count) {
    if (!count) return LEPTON_ERR_NULL_POINTER;
    *count = N_OUTPUTS;
    return LEPTON_OK;
}

static int tensor_info(int64_t slot, int64_t index, int64_t count, lepton_tensor_info *info) {
    if (!info) return LEPTON_ERR_NULL_POINTER;
    if (index < 0 || index >= count) return LEPTON_ERR_INDEX;
    *info = tensors[slot + index];
    return LEPTON_OK;
}

int ${name}_input_info(int64_t index, lepton_tensor_info *info) {
    return tensor_info(0, index, N_INPUTS, info);
}

int ${name}_output_info(int64_t index, lepton_tensor_info *info) {
    return tensor_info(N_INPUTS, index, N_OUTPUTS, info);
}

static int tensor_size(int64_t slot, int64_t index, int64_t count, int64_t batch, int64_t *bytes) {
    if (!bytes) return LEPTON_ERR_NULL_POINTER;
    if (index < 0 || index >= count) return LEPTON_ERR_INDEX;
    if (batch < 1) return LEPTON_ERR_BATCH_RANGE;
    if (!tensor_batched[slot + index]) {
        *bytes = tensor_bytes[slot + index];
        return LEPTON_OK;
    }
    if (tensor_bytes[slot + index] > 0 && batch > INT64_MAX / tensor_bytes[slot + index])
        return LEPTON_ERR_BATCH_RANGE;
    *bytes = tensor_bytes[slot + index] * batch;
    return LEPTON_OK;
}

int ${name}_input_size(int64_t index, int64_t batch, int64_t *bytes) {
    return tensor_size(0, index, N_INPUTS, batch, bytes);
}

int ${name}_output_size(int64_t index, int64_t batch, int64_t *bytes) {
    return tensor_size(N_INPUTS, index, N_OUTPUTS, batch, bytes);
}
""")


def common_api() -> str:
    return _common()
