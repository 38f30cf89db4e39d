// Emulation stand-in: the device bfloat16 type is c10's host one (same bits, same rounding).
#pragma once
#include <c10/util/BFloat16.h>
using __nv_bfloat16 = c10::BFloat16;
