/*
 * inventory.c: CPUs and memory through libuv, GPUs through the CUDA runtime
 * when the build has it. Owns: turning "no GPU" into a reason a person can
 * act on. Must not: pick GPUs for jobs (the scheduler does).
 */
#include "gpu/inventory.h"
#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#if FFDL_HAVE_CUDA
#include <cuda_runtime_api.h>

static void format_uuid(const unsigned char *b, char *out, size_t cap) {
  snprintf(out, cap, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
           b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
           b[14], b[15]);
}

static void probe_gpus(ffdl_inventory *inv) {
  int count = 0;
  cudaError_t rc = cudaGetDeviceCount(&count);
  if (rc != cudaSuccess) {
    snprintf(inv->no_gpu_reason, sizeof inv->no_gpu_reason, "the CUDA runtime reports: %s (%s)",
             cudaGetErrorString(rc), cudaGetErrorName(rc));
    return;
  }
  if (count == 0) {
    snprintf(inv->no_gpu_reason, sizeof inv->no_gpu_reason,
             "the CUDA runtime found no CUDA device");
    return;
  }
  inv->gpus = calloc((size_t)count, sizeof *inv->gpus);
  if (!inv->gpus) return;
  for (int i = 0; i < count; i++) {
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    ffdl_gpu_info *g = &inv->gpus[inv->gpu_count++];
    g->index = i;
    snprintf(g->name, sizeof g->name, "%s", prop.name);
    g->memory_bytes = prop.totalGlobalMem;
    format_uuid((const unsigned char *)prop.uuid.bytes, g->uuid, sizeof g->uuid);
  }
}
#else
static void probe_gpus(ffdl_inventory *inv) {
  snprintf(inv->no_gpu_reason, sizeof inv->no_gpu_reason,
           "this build has no CUDA support (the CUDA toolkit was not found at build time)");
}
#endif

int ffdl_inventory_probe(ffdl_inventory *inv) {
  memset(inv, 0, sizeof *inv);
  inv->cpus = (int)uv_available_parallelism();
  inv->memory_bytes = uv_get_total_memory();
  uint64_t constrained = uv_get_constrained_memory();
  if (constrained > 0 && constrained < inv->memory_bytes) inv->memory_bytes = constrained;
  probe_gpus(inv);
  return FFDL_OK;
}

void ffdl_inventory_free(ffdl_inventory *inv) {
  free(inv->gpus);
  inv->gpus = NULL;
  inv->gpu_count = 0;
}
