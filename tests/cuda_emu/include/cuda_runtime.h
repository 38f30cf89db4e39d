// Emulation stand-in for the CUDA runtime header: the types and calls the sources use are declared
// in emu_runtime.h, which the emulation build includes before every source.
#pragma once
