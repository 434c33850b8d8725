#pragma once
/// \file safetensors.hpp
/// \brief Reading safetensors checkpoints through POSIX mmap: one file (SafetensorsFile) or a
/// directory (Checkpoint), sharded through model.safetensors.index.json or a lone
/// model.safetensors. Every header, dtype, shape and offset is validated when a file is opened,
/// so a truncated or corrupt file fails before any weight is read; every error names the file
/// and, where there is one, the tensor.
///
/// Format: 8-byte little-endian header length N, N bytes of JSON
/// `{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`,
/// then the data section; offsets are relative to the data section's start.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"
#include "pie/model/config_io.hpp"

namespace pie::model {

/// \brief A read-only private mapping of a whole file; unmapped on destruction.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : path_(path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    PIE_CHECK(fd >= 0, path, ": cannot open: ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      int e = errno;
      ::close(fd);
      PIE_FAIL(path, ": cannot stat: ", std::strerror(e));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      int e = errno;
      ::close(fd);
      PIE_CHECK(p != MAP_FAILED, path, ": mmap failed: ", std::strerror(e));
      data_ = static_cast<const unsigned char*>(p);
    } else {
      ::close(fd);
    }
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() { if (data_) ::munmap(const_cast<unsigned char*>(data_), size_); }
  const unsigned char* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const unsigned char* data_ = nullptr;
  size_t size_ = 0;
};

/// \brief One tensor of a safetensors file: its metadata and a pointer into the mapping.
struct TensorInfo {
  std::string name;
  std::string file;                 ///< path of the file holding it (for error messages)
  std::string dtype_name;           ///< as the header spells it ("BF16", "I64", ...)
  std::optional<DType> dtype;       ///< F32/F16/BF16; empty for dtypes pie cannot load
  std::vector<int64_t> shape;
  const unsigned char* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

/// "[a, b, c]" for error messages.
inline std::string shape_string(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

namespace detail {
/// Element size of every dtype the safetensors format defines (0: unknown); only F32/F16/BF16
/// are loadable, the others are accepted in a header so that unrelated tensors don't stop a load.
inline size_t safetensors_dtype_size(const std::string& d) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1}, {"I8", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2}, {"U16", 2},
      {"F16", 2}, {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4}, {"F64", 8}, {"I64", 8},
      {"U64", 8}};
  auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}
inline std::optional<DType> loadable_dtype(const std::string& d) {
  if (d == "F32") return DType::F32;
  if (d == "F16") return DType::F16;
  if (d == "BF16") return DType::BF16;
  return std::nullopt;
}
}  // namespace detail

/// \brief One mapped, validated safetensors file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path) : map_(std::make_unique<MappedFile>(path)) {
    const size_t size = map_->size();
    PIE_CHECK(size >= 8, path, ": truncated safetensors file (", size,
              " bytes; the 8-byte header length is missing)");
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | map_->data()[i];  // little-endian on any host
    PIE_CHECK(n <= size - 8, path, ": header length ", n, " exceeds the file size ", size,
              " (truncated file?)");
    PIE_CHECK(n <= (uint64_t{100} << 20), path, ": header length ", n, " is implausibly large");
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(map_->data() + 8, map_->data() + 8 + n);
    } catch (const nlohmann::json::exception& e) {
      PIE_FAIL(path, ": bad safetensors header JSON: ", e.what());
    }
    PIE_CHECK(header.is_object(), path, ": safetensors header must be a JSON object");
    const unsigned char* base = map_->data() + 8 + n;
    const uint64_t data_size = size - 8 - n;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [begin, end) per non-empty tensor
    std::vector<std::string> range_names;
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        if (it->is_object())
          for (auto m = it->begin(); m != it->end(); ++m)
            if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
        continue;
      }
      const std::string& name = it.key();
      const auto& e = *it;
      auto bad = [&](const std::string& what) {
        PIE_FAIL(path, ": tensor '", name, "': ", what, " (entry ", e.dump(), ")");
      };
      if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") ||
          !e.contains("data_offsets"))
        bad("entry needs dtype, shape and data_offsets");
      if (!e["dtype"].is_string()) bad("dtype must be a string");
      TensorInfo t;
      t.name = name;
      t.file = path;
      t.dtype_name = e["dtype"].get<std::string>();
      size_t esize = detail::safetensors_dtype_size(t.dtype_name);
      if (esize == 0) bad("unknown dtype " + t.dtype_name);
      t.dtype = detail::loadable_dtype(t.dtype_name);
      if (!e["shape"].is_array()) bad("shape must be a list");
      uint64_t numel = 1;
      for (const auto& d : e["shape"]) {
        if (!d.is_number_unsigned()) bad("shape entries must be non-negative integers");
        uint64_t v = d.get<uint64_t>();
        if (v > (uint64_t{1} << 40) || (v && numel > (uint64_t{1} << 40) / v)) bad("shape too large");
        numel *= v;
        t.shape.push_back(static_cast<int64_t>(v));
      }
      const auto& off = e["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
          !off[1].is_number_unsigned())
        bad("data_offsets must be two non-negative integers");
      uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
      if (b > en) bad("data_offsets begin > end");
      if (en > data_size)
        bad("data_offsets [" + std::to_string(b) + ", " + std::to_string(en) +
            ") run past the data section of " + std::to_string(data_size) +
            " bytes (truncated file?)");
      if (en - b != numel * esize)
        bad("data_offsets span " + std::to_string(en - b) + " bytes but shape " +
            shape_string(t.shape) + " of " + t.dtype_name + " needs " +
            std::to_string(numel * esize));
      t.data = base + b;
      t.nbytes = en - b;
      if (en > b) {
        ranges.emplace_back(b, en);
        range_names.push_back(name);
      }
      tensors_.emplace(name, std::move(t));
    }
    // Overlapping tensors would alias each other's bytes: a corrupt or hostile file.
    std::vector<size_t> order(ranges.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
    for (size_t i = 1; i < order.size(); ++i)
      PIE_CHECK(ranges[order[i]].first >= ranges[order[i - 1]].second, path, ": tensor '",
                range_names[order[i]], "' overlaps tensor '", range_names[order[i - 1]], "'");
  }

  const std::string& path() const { return map_->path(); }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
  }

 private:
  std::unique_ptr<MappedFile> map_;  // heap-held so TensorInfo::data survives moves
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// \brief A checkpoint directory: model.safetensors.index.json and its shards, or a single
/// model.safetensors. Looks tensors up by their Hugging Face name.
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& dir) : dir_(dir) {
    namespace fs = std::filesystem;
    fs::path index = fs::path(dir) / "model.safetensors.index.json";
    fs::path single = fs::path(dir) / "model.safetensors";
    if (fs::exists(index)) {
      source_ = index.string();
      nlohmann::json j = detail::read_json(source_);
      PIE_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
                source_, ": missing 'weight_map' object");
      std::map<std::string, size_t> shard_of_file;
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
        PIE_CHECK(it->is_string(), source_, ": tensor '", it.key(), "': shard must be a file name");
        std::string f = it->get<std::string>();
        // Shards are siblings of the index; refuse paths that could escape the directory.
        PIE_CHECK(!f.empty() && f.find('/') == std::string::npos && f != "." && f != "..",
                  source_, ": tensor '", it.key(), "': bad shard file name '", f, "'");
        auto [pos, fresh] = shard_of_file.emplace(f, files_.size());
        if (fresh) files_.emplace_back((fs::path(dir) / f).string());
        const TensorInfo* t = files_[pos->second].find(it.key());
        PIE_CHECK(t, source_, ": tensor '", it.key(), "' is mapped to ", files_[pos->second].path(),
                  ", which does not contain it");
        index_[it.key()] = t;
      }
    } else if (fs::exists(single)) {
      source_ = single.string();
      files_.emplace_back(source_);
      for (const auto& [name, t] : files_[0].tensors()) index_[name] = &t;
    } else {
      PIE_FAIL(dir, ": no model.safetensors or model.safetensors.index.json");
    }
  }
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  /// The index file, or the single safetensors file: what an error about a missing tensor names.
  const std::string& source() const { return source_; }
  const std::string& dir() const { return dir_; }
  const std::deque<SafetensorsFile>& files() const { return files_; }
  const std::map<std::string, const TensorInfo*>& tensors() const { return index_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const TensorInfo* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : it->second;
  }
  /// The tensor, or a pie::Error naming the checkpoint's index/file and the tensor.
  const TensorInfo& at(const std::string& name) const {
    const TensorInfo* t = find(name);
    PIE_CHECK(t, source_, ": tensor '", name, "' not found");
    return *t;
  }

 private:
  std::string dir_, source_;
  std::deque<SafetensorsFile> files_;  // a deque: index_ points into files already opened
  std::map<std::string, const TensorInfo*> index_;
};

/// Converts elements [begin, begin + count) of `t` into `dst` (any of float/f16/bf16).
/// memcpy-based reads: safetensors offsets need not be aligned to the element size.
template <class T>
void read_elements(const TensorInfo& t, size_t begin, size_t count, T* dst) {
  PIE_CHECK(t.dtype, t.file, ": tensor '", t.name, "': dtype ", t.dtype_name,
            " cannot be loaded (pie reads F32, F16, BF16)");
  const unsigned char* src = t.data + begin * dtype_size(*t.dtype);
  if (*t.dtype == DTypeTraits<T>::dtype) {
    std::memcpy(dst, src, count * sizeof(T));
    return;
  }
  for (size_t i = 0; i < count; ++i) {
    float v;
    if (*t.dtype == DType::F32) {
      std::memcpy(&v, src + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      v = *t.dtype == DType::F16 ? f16::to_float(h) : bf16::to_float(h);
    }
    dst[i] = from_float<T>(v);
  }
}

}  // namespace pie::model
