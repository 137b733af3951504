/* cuda/backend_cuda_stub.c - mc_backend_cuda_init in builds without the
 * CUDA backend (MC_CUDA=OFF): it refuses, so that callers need no #ifdef. */
#include "backend.h"
#include "cuda/cuda_device.h"

mc_status mc_backend_cuda_init(int device, mc_backend **out, mc_err *err)
{
    (void)device;
    *out = NULL;
    return mc_err_set(err, MC_ERR_UNSUPPORTED, "built without CUDA (configure with -DMC_CUDA=ON)");
}

int mc_cuda_device_count(mc_err *err)
{
    mc_err_set(err, MC_ERR_UNSUPPORTED, "built without CUDA (configure with -DMC_CUDA=ON)");
    return 0;
}
