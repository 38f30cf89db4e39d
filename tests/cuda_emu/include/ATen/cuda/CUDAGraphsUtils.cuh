// Emulation stand-in: the capture status lives in CUDAContext.h here.
#pragma once
#include <ATen/cuda/CUDAContext.h>
