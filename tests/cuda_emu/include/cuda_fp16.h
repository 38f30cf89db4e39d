// Emulation stand-in: the device half type is c10's host one (same bits, same rounding).
#pragma once
#include <c10/util/Half.h>
using __half = c10::Half;
