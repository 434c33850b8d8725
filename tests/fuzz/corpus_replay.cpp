// CI's replay of the fuzz corpora (tests/fuzz/corpus/<target>/*, including the inputs that once
// crashed the server, e.g. 100,000-deep JSON) through the fuzz targets' entry points, built with
// the normal compiler. A crash or a broken invariant aborts the test.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz_targets.hpp"

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  struct Target {
    const char* name;
    void (*run)(const uint8_t*, size_t);
  };
  const Target targets[] = {{"request", pie::fuzz::request},
                            {"tokenizer", pie::fuzz::tokenizer},
                            {"chat_template", pie::fuzz::chat_template},
                            {"safetensors", pie::fuzz::safetensors}};
  int total = 0;
  for (const auto& t : targets) {
    const fs::path dir = fs::path(argv[1]) / t.name;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    if (files.empty()) {
      std::fprintf(stderr, "%s: empty corpus\n", dir.c_str());
      return 1;
    }
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      t.run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    }
    std::printf("%s: %zu inputs\n", t.name, files.size());
    total += static_cast<int>(files.size());
  }
  std::printf("replayed %d inputs\n", total);
  return 0;
}
