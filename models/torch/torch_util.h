// Helpers shared by the LibTorch translation units (models/*.cc, trainer/*.cc): the torch-exception
// boundary, tensor <-> TensorData conversion, device parsing. Internal: include it only from .cc
// files that already include <torch/torch.h>; headers that callers see stay torch-free.
#ifndef TANDEM_MODELS_TORCH_TORCH_UTIL_H_
#define TANDEM_MODELS_TORCH_TORCH_UTIL_H_

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <new>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "models/formats/safetensors.h"
#include "models/torch/yield_point.h"

namespace tandem::torch_util {

// Runs fn() (returning absl::Status or absl::StatusOr<T>), turning any exception into a status.
template <typename Fn>
auto CatchTorch(const char* what, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": out of device memory: ", e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(what, ": LibTorch: ", e.what_without_backtrace()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  }
}

// CatchTorch under InferenceMode (serving). The guard is thread-local and scoped: it never leaks
// to the caller. Training code, which needs autograd, calls CatchTorch directly.
template <typename Fn>
auto RunTorch(const char* what, Fn&& fn) -> decltype(fn()) {
  return CatchTorch(what, [&]() -> decltype(fn()) {
    c10::InferenceMode inference_mode;
    return fn();
  });
}

// "cpu", "cuda" or "cuda:N" as a device that exists: INVALID_ARGUMENT for an unknown name,
// FAILED_PRECONDITION for a CUDA device LibTorch does not see.
inline absl::StatusOr<torch::Device> ParseDevice(const std::string& name) {
  torch::Device device(torch::kCPU);
  try {
    device = torch::Device(name);
  } catch (const c10::Error&) {
    return absl::InvalidArgumentError(absl::StrCat("unknown device \"", name, "\""));
  }
  if (device.is_cuda()) {
    const int count = static_cast<int>(torch::cuda::device_count());
    if (!device.has_index()) device.set_index(0);
    if (device.index() >= count) {
      return absl::FailedPreconditionError(absl::StrCat(
          "device ", device.str(), " is absent: LibTorch sees ", count, " CUDA devices"));
    }
  } else if (!device.is_cpu()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported device \"", name, "\" (cpu or cuda:N)"));
  }
  return device;
}

// The torch half of a factory that builds on a named device: build(const torch::Device&) under
// CatchTorch (training nets: autograd stays on) or RunTorch (serving models), after ParseDevice
// (whose errors it returns).
template <typename Build>
auto CatchOnDevice(const char* what, const std::string& device, Build&& build)
    -> decltype(build(std::declval<const torch::Device&>())) {
  using Result = decltype(build(std::declval<const torch::Device&>()));
  return CatchTorch(what, [&]() -> Result {
    absl::StatusOr<torch::Device> d = ParseDevice(device);
    if (!d.ok()) return d.status();
    return build(*d);
  });
}
template <typename Build>
auto RunOnDevice(const char* what, const std::string& device, Build&& build)
    -> decltype(build(std::declval<const torch::Device&>())) {
  using Result = decltype(build(std::declval<const torch::Device&>()));
  return CatchOnDevice(what, device, [&](const torch::Device& d) -> Result {
    c10::InferenceMode inference_mode;
    return build(d);
  });
}

inline std::string ShapeString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

inline int64_t Numel(absl::Span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Checks `weights` against the tensors a config needs: `expected` is a vector of elements with
// a `name` and a `shape` (LlamaTensorShape, diffusion_net::NamedShape). INVALID_ARGUMENT naming
// the first missing or misshapen tensor, else the first unexpected one, followed by
// unexpected_note(name) where given (why that tensor does not belong).
template <typename NamedShapes>
absl::Status CheckTensorShapes(
    const NamedShapes& expected, const TensorMap& weights,
    const std::function<std::string(const std::string& name)>& unexpected_note = nullptr) {
  for (const auto& e : expected) {
    auto it = weights.find(e.name);
    if (it == weights.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("missing tensor ", e.name, " (expected shape ", ShapeString(e.shape), ")"));
    }
    if (it->second.shape != e.shape) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", e.name, ": expected shape ",
                                                     ShapeString(e.shape), ", got ",
                                                     ShapeString(it->second.shape)));
    }
  }
  // Every expected name is present, so more weights than expected means an unexpected one.
  if (weights.size() != expected.size()) {
    for (const auto& [name, t] : weights) {
      const bool known = std::any_of(expected.begin(), expected.end(),
                                     [&](const auto& e) { return e.name == name; });
      if (!known) {
        return absl::InvalidArgumentError(
            absl::StrCat("unexpected tensor ", name, " ", ShapeString(t.shape),
                         unexpected_note ? unexpected_note(name) : std::string()));
      }
    }
  }
  return absl::OkStatus();
}

// A TensorData's bytes as a float32 CPU tensor (a copy). F32, F16 and BF16 are accepted.
inline absl::StatusOr<torch::Tensor> ToFloatTensor(const std::string& name, const TensorData& t) {
  at::ScalarType type;
  int64_t element_size;
  switch (t.dtype) {
    case DType::kF32:
      type = torch::kFloat32;
      element_size = 4;
      break;
    case DType::kF16:
      type = torch::kFloat16;
      element_size = 2;
      break;
    case DType::kBF16:
      type = torch::kBFloat16;
      element_size = 2;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", name, ": dtype ", DTypeName(t.dtype), " is not supported (F32, F16 or BF16)"));
  }
  const int64_t numel = Numel(t.shape);
  if (static_cast<int64_t>(t.bytes.size()) != numel * element_size) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": ", t.bytes.size(),
                                                   " bytes for shape ", ShapeString(t.shape)));
  }
  // from_blob does not own the bytes: clone (F32) or convert (others) into a tensor that does.
  torch::Tensor view = torch::from_blob(const_cast<char*>(t.bytes.data()), t.shape,
                                        torch::TensorOptions().dtype(type));
  return type == torch::kFloat32 ? view.clone() : view.to(torch::kFloat32);
}

// A layer boundary of a training net, for x entering the layer: a yield point now (forward) and
// another when x's gradient is computed (backward, on the thread running autograd: the caller's
// on the CPU). See yield_point.h.
inline void LayerBoundary(const torch::Tensor& x) {
  TrainYieldPoint();
  if (x.requires_grad()) x.register_hook([](const torch::Tensor&) { TrainYieldPoint(); });
}

inline TensorData FromFloatTensor(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kCPU, torch::kFloat32).contiguous();
  TensorData out;
  out.dtype = DType::kF32;
  out.shape.assign(c.sizes().begin(), c.sizes().end());
  out.bytes.assign(static_cast<const char*>(c.data_ptr()), c.numel() * sizeof(float));
  return out;
}

}  // namespace tandem::torch_util

#endif  // TANDEM_MODELS_TORCH_TORCH_UTIL_H_
