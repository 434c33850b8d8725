// A kernel tracer for machines without Nsight Systems: a CUPTI injection library. Loaded by the
// CUDA driver into any program (no change to it), it records every kernel the GPU ran — those
// replayed from CUDA graphs included — and writes one CSV row per kernel at exit:
//
//   CUDA_INJECTION64_PATH=libpie_kernel_trace.so PIE_KERNEL_TRACE=trace.csv pie_bench MODEL ...
//   python3 bench/nsys_decode_profile.py trace.csv --batch 1
//
// Columns match `nsys stats --report cuda_gpu_trace` where the profile script reads them:
// Start (ns), Duration (ns), GrdX, Name (demangled). Timestamps are the GPU's, so kernels that
// overlap under programmatic dependent launch show it.
#include <cupti.h>
#include <cxxabi.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace {

std::FILE* g_out = nullptr;
std::mutex g_mu;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = size_t{16} << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
}

std::string demangle(const char* name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = status == 0 && d ? d : name;
  std::free(d);
  for (char& c : s)
    if (c == ',' || c == '"') c = ';';  // keep the CSV to four plain columns
  return s;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::lock_guard<std::mutex> lock(g_mu);
  CUpti_Activity* rec = nullptr;
  while (g_out && cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    if (rec->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && rec->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
    std::fprintf(g_out, "%llu,%llu,%d,%s\n", static_cast<unsigned long long>(k->start),
                 static_cast<unsigned long long>(k->end - k->start), k->gridX, demangle(k->name).c_str());
  }
  std::free(buffer);
}

void flush_at_exit() {
  cuptiActivityFlushAll(1);
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_out) std::fclose(g_out);
  g_out = nullptr;
}

}  // namespace

extern "C" int InitializeInjection(void) {
  const char* path = std::getenv("PIE_KERNEL_TRACE");
  g_out = std::fopen(path ? path : "pie_kernel_trace.csv", "w");
  if (!g_out) return 0;
  std::fprintf(g_out, "Start (ns),Duration (ns),GrdX,Name\n");
  if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
    std::fprintf(stderr, "pie kernel trace: CUPTI refused the activity API\n");
    return 0;
  }
  std::atexit(flush_at_exit);
  return 1;
}
