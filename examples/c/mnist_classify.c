/* Classify MNIST test digits with the bundled CNN, compiled by lepton into libmnist.so.
 *
 *     mnist_classify IMAGES.f32 LABELS.u8 [--batch B] [--threads T] [--dump OUTPUTS.f32]
 *
 * IMAGES.f32 holds N images as float32 [N, 1, 28, 28] in [0, 1], LABELS.u8 their N labels (one byte
 * each); make_raw.py writes both. The program prints the model's signature, the accuracy and the time
 * per image; --dump writes the model's outputs (float32 [N, 10]) to a file. It runs the images in
 * batches of B (default 64; the last batch may be smaller) on T threads (default: the library's).
 *
 * Plain C99 against the generated header mnist.h: no Python anywhere.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mnist.h"

static void *read_file(const char *path, long *size) {
    FILE *f = fopen(path, "rb");
    void *data = NULL;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (*size = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0) {
        data = malloc((size_t)*size);
        if (data && fread(data, 1, (size_t)*size, f) != (size_t)*size) {
            free(data);
            data = NULL;
        }
    }
    fclose(f);
    return data;
}

static void print_tensor(const char *what, const lepton_tensor_info *info) {
    int64_t d;
    printf("%s '%s' %s[", what, info->name, info->dtype == LEPTON_DTYPE_FLOAT32 ? "float32" : "?");
    for (d = 0; d < info->rank; d++) {
        if (info->shape[d] < 0) printf("%s%s", d ? ", " : "", info->dim_names[d]);
        else printf("%s%lld", d ? ", " : "", (long long)info->shape[d]);
    }
    printf("]");
}

static int fail(const char *what, int status) {
    fprintf(stderr, "mnist_classify: %s: %s (status %d)\n", what, lepton_status_string(status), status);
    return 1;
}

int main(int argc, char **argv) {
    const char *dump = NULL;
    int64_t batch = 64, threads = 0, n, done, correct = 0, in_bytes, out_bytes, classes, i;
    long images_size = 0, labels_size = 0;
    float *images, *outputs;
    unsigned char *labels;
    lepton_tensor_info in_info, out_info;
    mnist_context *ctx = NULL;
    struct timespec t0, t1;
    double seconds;
    int status, a;

    if (argc < 3) {
        fprintf(stderr, "usage: %s IMAGES.f32 LABELS.u8 [--batch B] [--threads T] [--dump OUTPUTS.f32]\n", argv[0]);
        return 2;
    }
    for (a = 3; a + 1 < argc; a += 2) {
        if (strcmp(argv[a], "--batch") == 0) batch = atoll(argv[a + 1]);
        else if (strcmp(argv[a], "--threads") == 0) threads = atoll(argv[a + 1]);
        else if (strcmp(argv[a], "--dump") == 0) dump = argv[a + 1];
        else break;
    }
    if (a != argc) {
        fprintf(stderr, "mnist_classify: unexpected argument '%s'\n", argv[a]);
        return 2;
    }

    /* What the library expects: one float32 [N, 1, 28, 28] input, one [N, classes] output. */
    if ((status = mnist_input_info(0, &in_info)) != LEPTON_OK) return fail("input_info", status);
    if ((status = mnist_output_info(0, &out_info)) != LEPTON_OK) return fail("output_info", status);
    if ((status = mnist_input_size(0, 1, &in_bytes)) != LEPTON_OK) return fail("input_size", status);
    if ((status = mnist_output_size(0, 1, &out_bytes)) != LEPTON_OK) return fail("output_size", status);
    print_tensor("model: input", &in_info);
    print_tensor(" -> output", &out_info);
    printf("\n");
    classes = out_bytes / (int64_t)sizeof(float);

    images = (float *)read_file(argv[1], &images_size);
    labels = (unsigned char *)read_file(argv[2], &labels_size);
    if (!images || !labels) {
        fprintf(stderr, "mnist_classify: cannot read '%s'\n", !images ? argv[1] : argv[2]);
        return 1;
    }
    n = labels_size;
    if (images_size != n * in_bytes) {
        fprintf(stderr, "mnist_classify: %s holds %ld bytes; %lld images of %lld bytes expected\n", argv[1],
                images_size, (long long)n, (long long)in_bytes);
        return 1;
    }
    outputs = (float *)malloc((size_t)(n * out_bytes));
    if (!outputs) return fail("outputs", LEPTON_ERR_OUT_OF_MEMORY);

    if ((status = mnist_create(&ctx, batch)) != LEPTON_OK) return fail("create", status);
    if (threads > 0 && (status = mnist_set_threads(ctx, threads)) != LEPTON_OK) return fail("set_threads", status);
    mnist_threads(ctx, &threads);
    printf("images: %lld, batch %lld, threads %lld\n", (long long)n, (long long)batch, (long long)threads);

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (done = 0; done < n; done += batch) {
        int64_t b = n - done < batch ? n - done : batch;
        const void *inputs[MNIST_NUM_INPUTS];
        void *outs[MNIST_NUM_OUTPUTS];
        inputs[0] = (const char *)images + done * in_bytes;
        outs[0] = (char *)outputs + done * out_bytes;
        if ((status = mnist_run(ctx, b, inputs, outs)) != LEPTON_OK) return fail("run", status);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);

    for (i = 0; i < n; i++) {
        const float *p = outputs + i * classes;
        int64_t c, best = 0;
        for (c = 1; c < classes; c++)
            if (p[c] > p[best]) best = c;
        correct += best == labels[i];
    }
    printf("accuracy: %.2f%% (%lld/%lld)\n", 100.0 * (double)correct / (double)n, (long long)correct, (long long)n);
    printf("time: %.1f us per image\n", 1e6 * seconds / (double)n);

    if (dump) {
        FILE *f = fopen(dump, "wb");
        if (!f || fwrite(outputs, 1, (size_t)(n * out_bytes), f) != (size_t)(n * out_bytes)) {
            fprintf(stderr, "mnist_classify: cannot write '%s'\n", dump);
            return 1;
        }
        fclose(f);
    }
    mnist_free(ctx);
    free(images);
    free(labels);
    free(outputs);
    return 0;
}
