/* cuda/cuda_device.h - which CUDA devices this process sees, for choosing
 * one before mc_backend_cuda_init (worker/session.c: by local rank). Both
 * builds define it: without CUDA (backend_cuda_stub.c) it answers 0 and
 * "built without CUDA". */
#ifndef MC_CUDA_DEVICE_H
#define MC_CUDA_DEVICE_H

#include "status.h"

/* The number of visible CUDA devices (>= 1), or 0 with err saying why
 * (MC_ERR_UNSUPPORTED: "built without CUDA ..." or "no CUDA device visible
 * (...)"). Nothing to free. */
int mc_cuda_device_count(mc_err *err);

#endif
