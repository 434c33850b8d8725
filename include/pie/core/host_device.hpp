#pragma once
/// \file host_device.hpp
/// \brief PIE_HD: marks a small function callable from host and device code. Under nvcc it is
/// `__host__ __device__ __forceinline__`; in plain C++ it is `inline`, so headers that use it
/// compile in either.
#if defined(__CUDACC__)
#define PIE_HD __host__ __device__ __forceinline__
#else
#define PIE_HD inline
#endif
