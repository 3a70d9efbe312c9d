/* What this machine offers learners: CPUs, memory and CUDA GPUs. */
#ifndef FFDL_GPU_INVENTORY_H
#define FFDL_GPU_INVENTORY_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  int index;
  char name[256];
  char uuid[64]; /* "GPU-xxxxxxxx-...", as nvidia-smi prints it */
  uint64_t memory_bytes;
} ffdl_gpu_info;

typedef struct {
  int cpus;
  uint64_t memory_bytes;
  int gpu_count;
  ffdl_gpu_info *gpus;     /* gpu_count entries */
  char no_gpu_reason[256]; /* set when gpu_count is 0 */
} ffdl_inventory;

/* Probes the machine. Never fails for lack of a GPU: that is a reason. */
int ffdl_inventory_probe(ffdl_inventory *inv);
void ffdl_inventory_free(ffdl_inventory *inv);

#endif
